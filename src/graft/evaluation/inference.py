"""Running a trained model over image files: probabilities, evaluation, and prediction rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from graft.data.dataset import Sample
from graft.data.loaders import inference_workers, make_loader
from graft.data.transforms import Preprocessing, eval_transform
from graft.evaluation.metrics import EvalResult
from graft.models import ModelSpec
from graft.models.fuse import inference_model
from graft.training.cache import FeatureCache, default_cache_root
from graft.training.features import body_key, eval_view, extract_features, feature_head, head_logits
from graft.training.loop import infer, warn_failed
from graft.training.runtime import inference_batch_size


@dataclass
class Prediction:
    """Top-k classes of one image."""

    path: Path
    labels: list[str]
    probs: list[float]

    @property
    def label(self) -> str:
        """The most likely class."""
        return self.labels[0]

    @property
    def prob(self) -> float:
        """Its probability."""
        return self.probs[0]


def predict_probs(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    samples: Sequence[Sample],
    device: torch.device,
    *,
    precision: str = "fp32",
    batch_size: int | None = None,
    workers: int | None = None,
    use_cache: bool = False,
    fast: nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities for the decodable samples.

    Runs a BatchNorm-folded, channels_last copy of the model. With ``use_cache``, the body's
    features come from (and go to) the feature cache, so evaluating a run whose body was never
    unfrozen re-reads the vectors its training computed. ``fast`` is an inference copy from
    :func:`~graft.models.fuse.inference_model` to reuse (built here when None).

    Returns:
        ``(probs, kept)``: an (n × C) float64 array and the indices into ``samples`` of its rows,
        in sample order. Undecodable files are warned about and left out.
    """
    batch_size = batch_size or inference_batch_size(device, 32)
    workers = inference_workers(device) if workers is None else workers
    head = feature_head(model, spec) if use_cache else None
    if head is not None:
        cache = FeatureCache(default_cache_root(), body_key(model, spec, pre, precision))
        (feats,) = extract_features(
            model,
            spec,
            pre,
            [(samples, [eval_view(pre)])],
            device,
            cache=cache,
            precision=precision,
            batch_size=batch_size,
            workers=workers,
            desc="predict",
        )
        logits = head_logits(head, feats.vectors[:, 0], device)
        indices, failed = feats.index, feats.failed
    else:
        loader = make_loader(
            samples,
            eval_transform(pre),
            batch_size=batch_size,
            workers=workers,
            min_size=pre.resize_size,
            pin_memory=device.type == "cuda",
        )
        if fast is None:
            fast = inference_model(model, pre.input_size, device)
        logits, indices, failed = infer(fast, loader, device, precision=precision)
    warn_failed(failed, [s.path for s in samples])
    if logits.numel() == 0:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
    order = torch.argsort(indices)
    probs = torch.softmax(logits[order].double(), dim=1).numpy()
    return probs, indices[order].numpy()


def evaluate_samples(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    samples: Sequence[Sample],
    classes: list[str],
    device: torch.device,
    **kwargs,
) -> EvalResult:
    """Loss, accuracy, per-class metrics and confusion matrix over labeled samples.

    ``kwargs`` are those of :func:`predict_probs`.
    """
    probs, kept = predict_probs(model, spec, pre, samples, device, **kwargs)
    labels = np.array([samples[i].label for i in kept], dtype=np.int64)
    if probs.shape[0] == 0:
        probs = np.zeros((0, len(classes)))
    return EvalResult.from_predictions(probs, labels, classes, skipped=len(samples) - len(kept))


def top_k(probs: np.ndarray, paths: Sequence[Path], classes: list[str], k: int) -> list[Prediction]:
    """One :class:`Prediction` per row of ``probs`` (the image at ``paths[row]``), with the ``k``
    most likely classes."""
    k = max(1, min(k, len(classes)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        Prediction(Path(path), [classes[j] for j in row], [float(probs[r, j]) for j in row])
        for r, (path, row) in enumerate(zip(paths, order, strict=True))
    ]
