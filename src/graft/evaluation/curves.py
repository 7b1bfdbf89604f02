"""ROC and precision-recall curves of one class's scores, their areas, in NumPy.

They follow scikit-learn's definitions (which is not a dependency of graft), ties included: images
with equal scores are crossed together, as one threshold. Average precision is the step-wise
area ``sum_n (R_n - R_{n-1}) P_n`` over those thresholds, not an interpolated one.
"""

from __future__ import annotations

import numpy as np


def _counts_by_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, ...]:
    """For each distinct score, highest first: positives and negatives scoring at or above it."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    if scores.shape != positive.shape:
        raise ValueError(f"{scores.shape[0]} scores but {positive.shape[0]} labels")
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], positive[order]
    # The last position of each run of equal scores: a threshold there crosses all of them at once.
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1] if len(ranked) else np.zeros(0, int)
    tps = np.cumsum(hits)[last] if len(ranked) else np.zeros(0, int)
    fps = last + 1 - tps
    return tps, fps, ranked[last] if len(ranked) else np.zeros(0)


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates as the threshold falls through the scores.

    Args:
        scores: One score per example (higher: more likely positive).
        positive: Whether each example is positive.

    Returns:
        ``(fpr, tpr, thresholds)``, starting at ``(0, 0)`` with threshold ``inf``. A rate without
        examples to divide by (no negatives, or no positives) is NaN throughout.
    """
    tps, fps, thresholds = _counts_by_threshold(scores, positive)
    tps, fps = np.r_[0, tps].astype(float), np.r_[0, fps].astype(float)
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(len(fps), np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(len(tps), np.nan)
    return fpr, tpr, np.r_[np.inf, thresholds]


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids); NaN without both positives and negatives."""
    fpr, tpr, _ = roc_curve(scores, positive)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def precision_recall_curve(
    scores: np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall as the threshold falls through the scores.

    Returns:
        ``(precision, recall, thresholds)`` with recall rising, starting at recall 0 and
        precision 1 (threshold ``inf``, nothing answered). Without positives, recall is NaN.
    """
    tps, fps, thresholds = _counts_by_threshold(scores, positive)
    precision = tps / np.maximum(tps + fps, 1)
    recall = tps / tps[-1] if len(tps) and tps[-1] > 0 else np.full(len(tps), np.nan)
    return np.r_[1.0, precision], np.r_[0.0, recall], np.r_[np.inf, thresholds]


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision (area under the PR curve, step-wise); NaN without positives."""
    precision, recall, _ = precision_recall_curve(scores, positive)
    if len(recall) < 2 or np.isnan(recall).any():
        return float("nan")
    return float(np.sum(np.diff(recall) * precision[1:]))
