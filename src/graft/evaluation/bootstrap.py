"""Percentile-bootstrap confidence intervals of metrics computed on a held-out split.

Small validation sets are the norm in transfer learning: on 153 images one image moves accuracy by
0.65 points, so a metric is printed with the range it would plausibly take on another draw of as
many images. The images (rows) are resampled with replacement, the metric is recomputed on each
resample, and the interval is the central ``level`` share of those values.

Every path draws its resamples from one seeded stream in the same chunks, so the printed numbers
are reproducible and the fast paths give exactly what the generic one gives on the same seed:

* :func:`bootstrap_interval`: any statistic of the resampled row indices, one resample at a time.
* :func:`bootstrap_intervals`: several statistics at once, vectorised over a chunk of resamples.
* :func:`bootstrap_mean`: the mean of a per-image array (accuracy, exact match), vectorised.
* :func:`resampled_counts`, :func:`resampled_weights`, :func:`resampled_roc_auc`,
  :func:`resampled_average_precision`: building blocks of vectorised statistics (confusion
  matrices, sums over the images, areas under curves).
* :func:`interval_text`, :func:`intervals_json`: how reports print and store the intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np

DEFAULT_SAMPLES = 1000
DEFAULT_LEVEL = 0.95
# Indices drawn per chunk: bounds memory (8 MB of int64) whatever the split's size.
_CHUNK_ELEMENTS = 1 << 20

BatchStatistic = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def _index_chunks(n: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """Resampled row indices, ``(rows, n)`` per chunk, ``samples`` rows in all, from one stream."""
    rng = np.random.default_rng(seed)
    rows = max(1, min(samples, _CHUNK_ELEMENTS // max(n, 1)))
    for start in range(0, samples, rows):
        yield rng.integers(0, n, size=(min(rows, samples - start), n))


def percentile_interval(values: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The central ``level`` share of ``values``, NaNs left out; ``(nan, nan)`` when none is left.

    Args:
        values: One statistic per resample.
        level: Share of the values inside the interval, e.g. 0.95.

    Returns:
        ``(low, high)``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_intervals(
    statistics: BatchStatistic,
    n: int,
    *,
    samples: int = DEFAULT_SAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of several statistics, computed together on the same resamples.

    Args:
        statistics: Given resampled row indices of shape ``(k, n)`` (``k`` resamples), returns
            each statistic's ``k`` values by name; a NaN value (undefined on that resample, e.g.
            ROC AUC without a negative) is left out.
        n: Rows (images) of the split.
        samples: Resamples drawn.
        level: Share of the resampled values inside each interval.
        seed: Seed of the resampling: the same seed gives the same intervals.

    Returns:
        ``{name: (low, high)}``; empty when ``n == 0`` (there is nothing to resample).

    Raises:
        ValueError: When ``samples`` is below 1 or ``level`` is not between 0 and 1.
    """
    if samples < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap needs samples >= 1 and 0 < level < 1, not {samples} and {level}")
    if n <= 0:
        return {}
    parts: dict[str, list[np.ndarray]] = {}
    for idx in _index_chunks(n, samples, seed):
        for name, values in statistics(idx).items():
            parts.setdefault(name, []).append(np.asarray(values, dtype=np.float64).reshape(len(idx)))
    return {name: percentile_interval(np.concatenate(v), level) for name, v in parts.items()}


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    samples: int = DEFAULT_SAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of any statistic of the rows, one resample at a time.

    Args:
        statistic: Computes the metric on resampled row indices ``idx`` (``n`` of them, drawn with
            replacement); a NaN result is left out.
        n: Rows (images) of the split.
        samples: Resamples drawn.
        level: Share of the resampled values inside the interval.
        seed: Seed of the resampling.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when ``n == 0`` or every resample gave NaN.

    Example:
        >>> correct = np.array([1.0] * 90 + [0.0] * 10)
        >>> low, high = bootstrap_interval(lambda idx: correct[idx].mean(), len(correct))
        >>> low < 0.9 < high
        True
    """
    per_chunk = bootstrap_intervals(
        lambda idx: {"value": np.array([statistic(row) for row in idx], dtype=np.float64)},
        n,
        samples=samples,
        level=level,
        seed=seed,
    )
    return per_chunk.get("value", (math.nan, math.nan))


def bootstrap_mean(
    values: np.ndarray,
    *,
    samples: int = DEFAULT_SAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean of a per-image array (0/1 correctness: accuracy), vectorised.

    The same resamples as :func:`bootstrap_interval` with ``statistic = lambda idx: values[idx].mean()``
    on the same seed, so the same interval, some hundred times faster.

    Args:
        values: One number per image.
        samples: Resamples drawn.
        level: Share of the resampled means inside the interval.
        seed: Seed of the resampling.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for no image.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    per_chunk = bootstrap_intervals(
        lambda idx: {"mean": values[idx].mean(axis=1)}, len(values), samples=samples, level=level, seed=seed
    )
    return per_chunk.get("mean", (math.nan, math.nan))


def resampled_counts(idx: np.ndarray, codes: np.ndarray, size: int) -> np.ndarray:
    """How many of each code every resample holds.

    Args:
        idx: Resampled row indices, ``(k, n)``.
        codes: One code in ``[0, size)`` per row, e.g. ``label * C + answer`` for a confusion matrix.
        size: Number of distinct codes.

    Returns:
        Counts of shape ``(k, size)``.
    """
    k = len(idx)
    # One bincount for all resamples: each resample's codes are shifted into a block of their own.
    shifted = codes[idx] + (np.arange(k) * size)[:, None]
    return np.bincount(shifted.ravel(), minlength=k * size).reshape(k, size)


def resampled_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """How many times each row is drawn in each resample: ``(k, n)`` counts (int32), which turn
    any sum over the rows into one over the resample (``weights @ values``)."""
    k = len(idx)
    shifted = idx + (np.arange(k) * n)[:, None]
    return np.bincount(shifted.ravel(), minlength=k * n).reshape(k, n).astype(np.int32)


def _drawn_below(
    scores: np.ndarray, members: np.ndarray, at: np.ndarray, side: str
) -> Callable[[np.ndarray], np.ndarray]:
    """A function of the weights ``(k, n)``: per resample, how many drawn ``members`` score below
    each score of ``at`` (``side`` ``"left"``: strictly below; ``"right"``: at or below).

    The sort is done here, once; each chunk of resamples then costs one cumulative sum.
    """
    order = np.flatnonzero(members)[np.argsort(scores[members], kind="mergesort")]
    positions = np.searchsorted(scores[order], at, side=side)

    def counts(weights: np.ndarray) -> np.ndarray:
        # int32 and np.take: a cumulative count is at most n, and this is the hot loop.
        cumulative = np.zeros((len(weights), len(order) + 1), dtype=np.int32)
        np.cumsum(np.take(weights, order, axis=1), axis=1, out=cumulative[:, 1:])
        return np.take(cumulative, positions, axis=1)

    return counts


def resampled_roc_auc(scores: np.ndarray, positive: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """ROC AUC of resamples (as :func:`graft.evaluation.curves.roc_auc`, ties included).

    The trapezoidal area is the chance that a positive outscores a negative, a tie counting half,
    so each drawn positive counts the drawn negatives below it and level with it.

    Args:
        scores: One score per row (higher: more likely positive).
        positive: Whether each row is positive.

    Returns:
        A function of the draws of each row per resample, ``(k, n)`` (:func:`resampled_weights`),
        giving ``(k,)`` areas: NaN for a resample without a positive or without a negative.
    """
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    below = _drawn_below(scores, ~positive, scores[positive], "left")
    level = _drawn_below(scores, ~positive, scores[positive], "right")

    def areas(weights: np.ndarray) -> np.ndarray:
        lower = below(weights)
        drawn = weights[:, positive].astype(np.float64)
        wins = (drawn * (lower + 0.5 * (level(weights) - lower))).sum(axis=1)
        pairs = drawn.sum(axis=1) * weights[:, ~positive].sum(axis=1)
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1), np.nan)

    return areas


def resampled_average_precision(
    scores: np.ndarray, positive: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """Average precision of resamples (as :func:`graft.evaluation.curves.average_precision`).

    Each drawn positive adds its share of recall at the precision of its threshold: of the drawn
    rows scoring at or above it (ties included), the positive share.

    Args:
        scores: One score per row (higher: more likely positive).
        positive: Whether each row is positive.

    Returns:
        A function of the draws of each row per resample, ``(k, n)`` (:func:`resampled_weights`),
        giving ``(k,)`` values: NaN for a resample without a positive.
    """
    # Negated scores: "at or above" becomes "at or below", which cumulative sums count.
    negated, positive = -np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    hits = _drawn_below(negated, positive, negated[positive], "right")
    misses = _drawn_below(negated, ~positive, negated[positive], "right")

    def values(weights: np.ndarray) -> np.ndarray:
        found = hits(weights).astype(np.float64)
        precision = found / np.maximum(found + misses(weights), 1)
        drawn = weights[:, positive].astype(np.float64)
        total = drawn.sum(axis=1)
        return np.where(total > 0, (drawn * precision).sum(axis=1) / np.where(total > 0, total, 1), np.nan)

    return values


def interval_text(interval: tuple[float, float] | None, first: bool = False) -> str:
    """An interval as a headline shows it after its metric: `` [95% CI 0.928-0.987]`` for the
    ``first`` (which names the level), `` [0.928-0.987]`` after; empty when missing or undefined."""
    if interval is None or any(math.isnan(v) for v in interval):
        return ""
    label = f"{DEFAULT_LEVEL:.0%} CI " if first else ""
    return f" [{label}{interval[0]:.3f}-{interval[1]:.3f}]"


def intervals_json(intervals: Mapping[str, tuple[float, float]]) -> dict[str, list[float | None]]:
    """JSON-ready intervals: ``[low, high]`` per metric, None for an undefined (NaN) end."""
    return {name: [None if math.isnan(v) else v for v in pair] for name, pair in intervals.items()}
