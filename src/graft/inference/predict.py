"""Running a trained model over image files: probabilities, evaluation, and prediction rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from graft.data.dataset import Sample
from graft.data.loaders import inference_workers, make_loader
from graft.data.transforms import Preprocessing
from graft.features.cache import FeatureCache, default_cache_root
from graft.features.extract import body_key, extract_features, feature_head, head_logits
from graft.features.forward import infer, split_outputs, warn_failed
from graft.features.views import View, eval_view, tta_views
from graft.inference.ood import Joined, Scored, distances
from graft.infrastructure.errors import GraftError
from graft.infrastructure.memory import Pieces
from graft.infrastructure.runtime import channels_last, inference_batch_size
from graft.models import ModelSpec
from graft.models.fuse import inference_model

ACTIVATIONS = ("softmax", "sigmoid")


@dataclass
class Outputs:
    """What :func:`sample_outputs` computed for the decodable samples, in sample order.

    Attributes:
        probs: ``(n, C)`` float64 probabilities.
        kept: Index into the samples of each row.
        scores: ``(n,)`` out-of-distribution scores (:mod:`graft.inference.ood`), or None
            without reference features.
    """

    probs: np.ndarray
    kept: np.ndarray
    scores: np.ndarray | None = None


def sample_probs(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    samples: Sequence[Sample],
    device: torch.device,
    **options,
) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, kept)`` of :func:`sample_outputs` (same arguments)."""
    out = sample_outputs(model, spec, pre, samples, device, **options)
    return out.probs, out.kept


def sample_outputs(
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
    tta: bool | int = False,
    activation: str = "softmax",
    temperature: float = 1.0,
    references: torch.Tensor | None = None,
) -> Outputs:
    """Class probabilities (and out-of-distribution scores) for the decodable samples.

    Runs a BatchNorm-folded, channels_last copy of the model. With ``use_cache``, the body's
    features come from (and go to) the feature cache, so evaluating a run whose body was never
    unfrozen re-reads the vectors its training computed. ``fast`` is an inference copy from
    :func:`~graft.models.fuse.inference_model` to reuse (built here when None), or with
    ``references`` already a :class:`~graft.inference.ood.Joined` one. ``tta`` (True
    or 2: centre and mirror; 4: also the two end crops) makes each image's probabilities the
    mean over :func:`~graft.features.views.tta_views` (each image is still decoded once), and
    its score the mean of its views' scores.
    ``activation`` is ``"softmax"`` (one class per image) or ``"sigmoid"`` (a probability per
    class, for a multi-label model, :attr:`graft.inference.decision.Decision.activation`); with
    TTA the views' probabilities are averaged either way. ``temperature`` divides the softmax's
    logits (calibration). ``references``: the run's reference features
    (:mod:`graft.inference.ood`), to score each image too.

    Every forward pass runs a full batch: a short one (the last, or one that lost undecodable
    files) is padded by repeating its last image, and the padded rows are dropped. On the CPU an
    image's output is bitwise the same in any batch of the same size but not across sizes
    (batch 1 vs 8 differed by 1.6e-7), so this makes each image's probabilities independent of
    how the files were grouped into calls: shards, resumed and chunked predictions agree exactly.

    Undecodable files are warned about and left out.
    """
    if activation not in ACTIVATIONS:
        raise GraftError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
    batch_size = batch_size or inference_batch_size(device, 32)
    workers = inference_workers(device) if workers is None else workers
    count = 2 if tta is True else int(tta)
    views = tta_views(pre, count) if count else [eval_view(pre)]
    head = feature_head(model, spec) if use_cache else None
    scale = _Scale(temperature, activation)
    if head is not None:
        logits, indices, failed = _cached_logits(
            model, head, spec, pre, samples, views, device, precision, batch_size, workers, scale, references
        )
    else:
        per_batch = max(1, batch_size // len(views))
        loader = make_loader(
            samples,
            _Stacked(views) if count else views[0].transform,
            batch_size=per_batch,
            workers=workers,
            min_size=pre.resize_size,
            pin_memory=device.type == "cuda",
        )
        if fast is None:
            fast = inference_model(model, pre.input_size, device)
        if references is not None and not isinstance(fast, Joined):
            fast = Joined(Scored(fast, spec, references))
        net = _FullBatch(_ViewMean(fast, scale, references is not None) if count else fast, per_batch)
        logits, indices, failed = infer(net, loader, device, precision=precision)
    warn_failed(failed, [s.path for s in samples])
    if logits.numel() == 0:
        none = np.zeros(0, dtype=np.int64)
        return Outputs(np.zeros((0, 0)), none, None if references is None else np.zeros(0))
    order = torch.argsort(indices)
    logits, scores = _split_score(logits[order], references is not None)
    # TTA logits are already the views' mean probabilities, at the temperature.
    probs = activate(logits if count else scale(logits), activation)
    return Outputs(probs, indices[order].numpy(), None if scores is None else scores.double().numpy())


def activate(logits: torch.Tensor, activation: str = "softmax") -> np.ndarray:
    """float64 probabilities from logits: a softmax over the classes, or a sigmoid per class."""
    z = logits.double()
    return (torch.sigmoid(z) if activation == "sigmoid" else torch.softmax(z, dim=1)).cpu().numpy()


def _cached_logits(
    model: nn.Module,
    head: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    samples: Sequence[Sample],
    views: Sequence[View],
    device: torch.device,
    precision: str,
    batch_size: int,
    workers: int,
    scale: _Scale,
    references: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``(logits, indices, failed)`` as :func:`~graft.features.forward.infer` returns them, from
    the body's features in (and written to) the feature cache, then the head (with the score
    column last when ``references`` are given; several views are averaged as
    :class:`_ViewMean` does)."""
    cache = FeatureCache(default_cache_root(), body_key(model, spec, pre, precision))
    (feats,) = extract_features(
        model,
        spec,
        pre,
        [(samples, views)],
        device,
        cache=cache,
        precision=precision,
        batch_size=batch_size,
        workers=workers,
        desc="predict",
    )
    n, v, dim = feats.vectors.shape
    if n == 0:  # nothing decoded: the head cannot take an empty matrix; the caller says why
        return torch.zeros(0, 0), feats.index, feats.failed
    flat = feats.vectors.reshape(n * v, dim)
    logits = head_logits(head, flat, device)
    if v > 1:
        logits = _mean_over_views(scale(logits), v, scale.activation)
    if references is not None:
        scores = distances(flat, references).reshape(n, v).mean(1)
        logits = torch.cat([logits, scores[:, None]], dim=1)
    return logits, feats.index, feats.failed


class _Stacked:
    """All views of one decoded image as a ``(views, C, H, W)`` tensor (picklable for workers)."""

    def __init__(self, views: Sequence[View]) -> None:
        self.transforms = [v.transform for v in views]

    def __call__(self, image: object) -> torch.Tensor:
        return torch.stack([t(image) for t in self.transforms])


def _mean_over_views(logits: torch.Tensor, views: int, activation: str = "softmax") -> torch.Tensor:
    """``(n * views, C)`` logits → ``(n, C)`` logits whose ``activation`` is the average of the
    views' probabilities: the log of the mean softmax, or the logit of the mean sigmoid (an
    average of logits would not be an average of probabilities)."""
    if activation == "sigmoid":
        probs = torch.sigmoid(logits.float()).reshape(-1, views, logits.shape[1]).mean(1)
        return torch.logit(probs)  # 0 and 1 become -inf and inf, whose sigmoids are 0 and 1 again
    probs = torch.softmax(logits.float(), dim=1).reshape(-1, views, logits.shape[1]).mean(1)
    return probs.clamp_min(1e-30).log()


class _FullBatch(nn.Module):
    """Runs a model on exactly ``size`` images: a shorter batch is padded with copies of its last
    image and only its own rows are returned (see :func:`sample_probs`)."""

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.model = model
        self.size = size
        self.pieces = Pieces("prediction")  # out of memory: the padded batch goes in pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n < self.size:
            x = channels_last(torch.cat([x, x[-1:].expand(self.size - n, *x.shape[1:])]))
        parts = self.pieces.run(lambda xs: split_outputs(self.model(channels_last(xs)))[0], x)
        return torch.cat(parts)[:n]


class _ViewMean(nn.Module):
    """Runs a model on ``(batch, views, C, H, W)`` and averages the views' probabilities (at
    the temperature) and, with ``scored``, the score in the last column too."""

    def __init__(self, model: nn.Module, scale: _Scale, scored: bool = False) -> None:
        super().__init__()
        self.model = model
        self.scale = scale
        self.scored = scored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = split_outputs(self.model(channels_last(x.flatten(0, 1))))
        logits, scores = _split_score(out, self.scored)
        mean = _mean_over_views(self.scale(logits), x.shape[1], self.scale.activation)
        if scores is None:
            return mean
        return torch.cat([mean, scores.reshape(-1, x.shape[1]).mean(1, keepdim=True)], dim=1)


class _Scale:
    """Divides softmax logits by the calibration temperature (sigmoid outputs are left alone)."""

    def __init__(self, temperature: float, activation: str) -> None:
        self.temperature = float(temperature) if activation == "softmax" else 1.0
        self.activation = activation

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.temperature == 1.0 else logits.float() / self.temperature


def _split_score(out: torch.Tensor, scored: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, scores)`` from a :class:`~graft.inference.ood.Joined` output (scores None
    when the output has no score column)."""
    return (out[:, :-1], out[:, -1]) if scored else (out, None)
