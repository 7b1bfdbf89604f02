"""The out-of-distribution score: how far an image's body features are from the training images'.

The score is the cosine distance from an image's head-input vector (the body's pooled features)
to the nearest of the training images' vectors: 0 for a training image itself, near 1 for
something the body sees as unrelated. It was chosen by measurement (``bench/trust.py``): on
hymenoptera with flowers5 as the outside images it separates them better than the maximum
softmax probability, the energy score, or a class-conditional Mahalanobis distance with a
shrunk shared covariance (the README's "Trustworthy confidence" table has the numbers).

The reference vectors are stored with the run (``graft.ood.references`` in
``model.safetensors``): at most :data:`MAX_REFERENCES` unit vectors in float16, a seeded sample
of each class in proportion when there are more training images than that. No image is stored.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from graft.features.extract import feature_head
from graft.infrastructure.errors import GraftError
from graft.models import ModelSpec

REFERENCES_KEY = "graft.ood.references"
MAX_REFERENCES = 5000
DEFAULT_ACCEPT = 0.95
SCORE_NAME = "cosine distance to the nearest training image"
_CHUNK = 4096  # reference rows per matrix product: bounds memory for many images at once


def unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    """Rows scaled to length 1 (float32); a zero row stays zero."""
    v = vectors.float()
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def choose_references(
    vectors: torch.Tensor, labels: np.ndarray | None = None, limit: int = MAX_REFERENCES, seed: int = 0
) -> torch.Tensor:
    """The reference vectors to store: the training images' unit vectors in float16, at most
    ``limit`` of them (:func:`reference_sample` picks them). ``labels``: one class index per row
    (None: one pool)."""
    n = vectors.shape[0]
    if n == 0:
        raise GraftError("no training image features to measure the unknown score against")
    keep = reference_sample(n, labels, limit, seed)
    return unit_rows(vectors[torch.from_numpy(keep)]).half()


def reference_sample(
    n: int, labels: np.ndarray | None = None, limit: int = MAX_REFERENCES, seed: int = 0
) -> np.ndarray:
    """Which of ``n`` training images to keep as references, in order: all of them up to
    ``limit``; beyond, a seeded sample of exactly ``limit``, each class's share in proportion to
    its size (largest remainders), every class keeping at least one while there are fewer
    classes than ``limit``. Picking before extraction spares the features of the rest."""
    if n <= limit:
        return np.arange(n)
    pool = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels)
    classes = [np.flatnonzero(pool == c) for c in np.unique(pool)]
    rng = np.random.default_rng(seed)
    picks = [rng.choice(g, k, replace=False) for g, k in zip(classes, _quotas(classes, limit), strict=True)]
    return np.sort(np.concatenate(picks))


def _quotas(classes: list[np.ndarray], limit: int) -> list[int]:
    """How many of each class to keep: ``limit`` in all, in proportion to the classes' sizes."""
    sizes = np.array([len(g) for g in classes])
    share = limit * sizes / sizes.sum()
    quota = np.floor(share).astype(np.int64)
    if len(sizes) <= limit:
        quota = np.maximum(quota, 1)  # a small class still has its example
    while quota.sum() > limit:  # the minimums overshot: take from the classes kept most
        quota[np.argmax(quota)] -= 1
    for i in np.argsort(-(share - np.floor(share)), kind="stable"):
        if quota.sum() >= limit:
            break
        if quota[i] < sizes[i]:
            quota[i] += 1
    return quota.tolist()


def distances(vectors: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """The score of each row of ``vectors`` ``(n, dim)``: 1 - its largest cosine similarity to the
    ``references`` (unit rows), as float32."""
    q = unit_rows(vectors)
    refs = references.to(q.device, torch.float32)
    best = torch.full((q.shape[0],), -1.0, device=q.device)
    for start in range(0, refs.shape[0], _CHUNK):
        best = torch.maximum(best, (q @ refs[start : start + _CHUNK].T).max(dim=1).values)
    return (1.0 - best).clamp(0.0, 2.0)


def accept_threshold(scores: np.ndarray, accept: float = DEFAULT_ACCEPT) -> float:
    """A threshold under which at least ``accept`` of ``scores`` fall (the scores of
    in-distribution held-out images: that share of them is answered, the rest "unknown"):
    halfway between the last score kept and the next.

    Raises:
        GraftError: Without scores, or for ``accept`` outside (0, 1].
    """
    if not 0.0 < accept <= 1.0:
        raise GraftError(f"the share of val images to accept must be in (0, 1], not {accept!r}")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) == 0:
        raise GraftError("no val image to choose the unknown threshold on")
    k = max(1, math.ceil(accept * len(s) - 1e-9))
    # Midway to the next score: an image exactly at a val score would flip on float noise
    # (an ONNX export's score differs in the 7th digit).
    return float((s[k - 1] + s[k]) / 2 if k < len(s) else s[-1] + 1e-6)


class Scored(nn.Module):
    """A classifier that also scores each image: ``forward(x)`` returns ``(logits, score)``,
    the score from the body's features by :func:`distances`. Built from a copy of the model
    whose head is replaced by an identity, so the body's output is the head's input.

    Raises:
        GraftError: If the model has no single Linear-first head (its features are not the
            head's input vector), or the references do not fit the body's feature width.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec, references: torch.Tensor) -> None:
        super().__init__()
        check_references(model, spec, references)
        self.body = copy.deepcopy(model)
        self.body.set_submodule(spec.head_names[0], nn.Identity())
        self.head = copy.deepcopy(feature_head(model, spec))
        self.register_buffer("references", references.float())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x).flatten(1).float()
        q = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
        score = 1.0 - (q @ self.references.T).max(dim=1).values
        return self.head(features), score.clamp(0.0, 2.0)


class Joined(nn.Module):
    """``(logits, score)`` as one ``(n, classes + 1)`` tensor (the score last), so the passes
    that expect one output tensor carry both."""

    def __init__(self, scored: nn.Module) -> None:
        super().__init__()
        self.scored = scored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, score = self.scored(x)
        return torch.cat([logits.float(), score[:, None].float()], dim=1)


def check_references(model: nn.Module, spec: ModelSpec, references: torch.Tensor) -> None:
    """Refuse reference features the model cannot score against.

    Raises:
        GraftError: The model has no single Linear-first head, or ``references`` is not a
            non-empty ``(n, width)`` float matrix of the head's input width.
    """
    head = feature_head(model, spec)
    if head is None:
        raise GraftError(f"{spec.arch} has no single linear head: the unknown score needs its features")
    first = head[0] if isinstance(head, nn.Sequential) else head
    width = int(first.in_features)
    shape = tuple(references.shape)
    if references.ndim != 2 or shape[0] < 1 or shape[1] != width or not references.is_floating_point():
        raise GraftError(
            f"the stored reference features have shape {shape}; the model's features have width {width}"
        )
