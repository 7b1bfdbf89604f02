"""Prediction rows: the answered classes of each image (NumPy only, shared by the PyTorch and ONNX
paths, so both answer alike)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graft.inference.decision import Decision, Reject


@dataclass
class Prediction:
    """The answer for one image.

    Attributes:
        path: The image.
        labels: Single-label: the answered class (the top class, or the one a binary threshold
            picks), then the next most likely ones up to top-k. Multi-label: every class at or
            above its threshold, most probable first; possibly none.
        probs: The probability of each of ``labels``.
        score: Its out-of-distribution score (:mod:`graft.inference.ood`), None without one.
        unknown: The answer given instead of ``labels`` when the score is past the rejection
            threshold (e.g. ``"unknown"``); ``""`` when the image was not rejected. ``labels``
            still hold what the classes alone would answer.
    """

    path: Path
    labels: list[str]
    probs: list[float]
    score: float | None = None
    unknown: str = ""

    @property
    def label(self) -> str:
        """The answer: the rejection label for a rejected image, else the answered class (the
        most probable one, for multi-label; ``""`` when a multi-label model answers none)."""
        if self.unknown:
            return self.unknown
        return self.labels[0] if self.labels else ""

    @property
    def prob(self) -> float:
        """Its probability (0.0 with no label)."""
        return self.probs[0] if self.probs else 0.0


def decide(
    probs: np.ndarray,
    paths: Sequence[Path | str],
    classes: Sequence[str],
    decision: Decision | None = None,
    k: int = 1,
    scores: np.ndarray | None = None,
    reject: Reject | None = None,
) -> list[Prediction]:
    """One :class:`Prediction` per row of ``probs`` (the image at ``paths[row]``).

    Args:
        probs: ``(n, classes)`` probabilities from ``decision``'s activation.
        paths: The images, one per row.
        classes: The class names, in column order.
        decision: How probabilities become answers (default: the top class of a softmax).
        k: Single-label: classes per row, the answered one first, then the others from the most
            likely (clamped to 1..number of classes). Ignored for multi-label, which answers
            every class at or above its threshold.
        scores: Each row's out-of-distribution score (None: none known).
        reject: When a row is answered ``reject.label`` (needs ``scores``).
    """
    decision = decision or Decision()
    probs = np.asarray(probs)
    if decision.multi_label:
        rows = decision.answers(probs)
    else:
        k = max(1, min(k, len(classes)))
        order = np.argsort(-probs, axis=1, kind="stable")
        answered = decision.predicted(probs)
        # The answered class first (a binary threshold may pick the second most likely), then
        # the rest by probability.
        rows = [
            [int(a), *(int(j) for j in row if j != a)][:k] for a, row in zip(answered, order, strict=True)
        ]
    n = len(rows)
    score = [None] * n if scores is None else [float(x) for x in scores]
    out = reject.rejected(scores) if reject is not None and scores is not None else np.zeros(n, bool)
    return [
        Prediction(
            Path(path),
            [classes[j] for j in row],
            [float(probs[r, j]) for j in row],
            score[r],
            reject.label if out[r] else "",
        )
        for r, (path, row) in enumerate(zip(paths, rows, strict=True))
    ]


def top_k(probs: np.ndarray, paths: Sequence[Path | str], classes: Sequence[str], k: int) -> list[Prediction]:
    """The ``k`` most likely classes of each row, best first (:func:`decide` with a plain softmax
    decision)."""
    return decide(probs, paths, classes, Decision(), k)
