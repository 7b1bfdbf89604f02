"""Running a trained model over image files: probabilities, evaluation, and prediction rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from graft.data.dataset import Sample
from graft.data.loaders import make_loader
from graft.data.transforms import Preprocessing, eval_transform
from graft.evaluation.metrics import EvalResult
from graft.training.loop import infer, warn_failed


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
    pre: Preprocessing,
    samples: Sequence[Sample],
    device: torch.device,
    *,
    batch_size: int = 64,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities for the decodable samples.

    Returns:
        ``(probs, kept)``: an (n × C) float64 array and the indices into ``samples`` of its rows,
        in sample order. Undecodable files are warned about and left out.
    """
    loader = make_loader(
        samples,
        eval_transform(pre),
        batch_size=batch_size,
        workers=workers,
        min_size=pre.resize_size,
        pin_memory=device.type == "cuda",
    )
    logits, indices, failed = infer(model, loader, device)
    warn_failed(failed, [s.path for s in samples])
    if logits.numel() == 0:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
    order = torch.argsort(indices)
    probs = torch.softmax(logits[order].double(), dim=1).numpy()
    return probs, indices[order].numpy()


def evaluate_samples(
    model: nn.Module,
    pre: Preprocessing,
    samples: Sequence[Sample],
    classes: list[str],
    device: torch.device,
    *,
    batch_size: int = 64,
    workers: int | None = None,
) -> EvalResult:
    """Loss, accuracy, per-class metrics and confusion matrix over labeled samples."""
    probs, kept = predict_probs(model, pre, samples, device, batch_size=batch_size, workers=workers)
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
