"""How far a classifier's probabilities can be trusted: temperature scaling, expected calibration
error, reliability bins and selective classification (accuracy against coverage). NumPy only,
plus SciPy's bounded scalar minimiser for the temperature.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017) divides the
logits by one number ``T`` fitted on held-out images; it changes how confident the softmax is,
never which class is on top.
"""

from __future__ import annotations

import math

import numpy as np

# The temperatures a fit may return: wider than any sane calibration, narrow enough that the
# search stays away from a degenerate (all-uniform or one-hot) softmax.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# log of the smallest positive float64: -inf log-probabilities (a probability that underflowed
# to 0) are clamped to it, so that they stay finite and scale with the temperature.
_LOG_FLOOR = math.log(np.finfo(np.float64).tiny)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    """``log(sum(exp(z)))`` of each row, without overflow."""
    top = z.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(z - top).sum(axis=1))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimising the mean negative log-likelihood of ``softmax(logits / T)``.

    The search is over ``beta = 1 / T``, where the NLL is convex (a log-sum-exp of linear
    functions of ``beta`` minus a linear one), so a bounded 1-D search finds its minimum.
    Softmax ignores a constant added to a row, so log-probabilities (a log-softmax output) give
    the same temperature as the logits they came from.

    Args:
        logits: ``(n, classes)`` logits or log-probabilities.
        labels: ``(n,)`` true class indices.

    Returns:
        ``T`` in :data:`TEMPERATURE_BOUNDS` (1.0 with fewer than 2 images: nothing to fit).

    Raises:
        ValueError: For mismatched shapes, class indices out of range or NaN logits.
    """
    from scipy.optimize import minimize_scalar  # imported here: SciPy costs time to load

    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if z.ndim != 2 or z.shape[0] != labels.shape[0]:
        raise ValueError(f"logits of shape {z.shape} for {labels.shape[0]} labels")
    if len(labels) < 2:
        return 1.0
    if np.isnan(z).any() or labels.min() < 0 or labels.max() >= z.shape[1]:
        raise ValueError("NaN logits or a label outside the classes")
    z = np.maximum(z - z.max(axis=1, keepdims=True), _LOG_FLOOR)
    picked = z[np.arange(len(labels)), labels]

    def nll(beta: float) -> float:
        return float(np.mean(_logsumexp(beta * z) - beta * picked))

    low, high = TEMPERATURE_BOUNDS
    best = minimize_scalar(nll, bounds=(1.0 / high, 1.0 / low), method="bounded", options={"xatol": 1e-7})
    return float(np.clip(1.0 / best.x, low, high))


def uncalibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling: ``softmax(log(probs) * temperature)``.

    ``probs`` are ``softmax(logits / temperature)``, so ``log(probs) * temperature`` is the logits
    up to a constant per row, which softmax ignores. A probability of 0 (underflow) is clamped
    to the smallest positive float first."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), np.finfo(np.float64).tiny, 1.0))
    return _softmax(logp * temperature)


def _top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The confidence (top probability) and correctness (top class is the label) of each image."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).ravel()
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probabilities of shape {probs.shape} for {labels.shape[0]} labels")
    if len(labels) == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return probs.max(axis=1), probs.argmax(axis=1) == labels


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict]:
    """Images grouped by top-label confidence into ``bins`` equal-width bins ``(lo, hi]``.

    Args:
        probs: ``(n, classes)`` probabilities.
        labels: ``(n,)`` true class indices.
        bins: Number of bins over [0, 1].

    Returns:
        One dict per non-empty bin, lowest first: ``lo``, ``hi`` (its edges), ``confidence`` (the
        mean top probability in it), ``accuracy`` (the share whose top class is right) and
        ``count``.
    """
    confidence, correct = _top_label(probs, labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # side="left": a confidence equal to an edge falls in the bin below it, as in (lo, hi].
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    out = []
    for b in np.unique(which):
        inside = which == b
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "confidence": float(confidence[inside].mean()),
                "accuracy": float(correct[inside].mean()),
                "count": int(inside.sum()),
            }
        )
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label expected calibration error (Guo et al. 2017): over equal-width confidence bins,
    the mean of ``|accuracy - confidence|`` weighted by the share of images in each bin.

    Returns:
        The ECE in [0, 1]; NaN without images.
    """
    groups = reliability_bins(probs, labels, bins)
    n = sum(g["count"] for g in groups)
    if n == 0:
        return math.nan
    return float(sum(g["count"] * abs(g["accuracy"] - g["confidence"]) for g in groups) / n)


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selective classification: answer only the most confident images, and see how accurate the
    answers are as more of them are kept.

    Images of equal confidence are kept together in any order, so within such a group the
    accuracy is the expected one (the group's accuracy, spread evenly): the curve does not
    depend on the order the images came in. A NaN confidence ranks lowest. For an
    out-of-distribution score (higher: less trusted) pass ``-scores``.

    Args:
        confidence: ``(n,)`` how much each answer is trusted (higher: kept first).
        correct: ``(n,)`` whether each answer is right.

    Returns:
        ``(coverage, accuracy)``: for ``k`` = 1..n, ``k / n`` and the accuracy of the ``k`` most
        confident images (empty arrays without images).
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    right = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != right.shape:
        raise ValueError(f"{conf.shape[0]} confidences but {right.shape[0]} answers")
    n = len(conf)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    ranked = np.where(np.isnan(conf), -np.inf, conf)
    order = np.argsort(-ranked, kind="stable")
    ranked, hits = ranked[order], right[order].astype(np.float64)
    # Start and end (exclusive) of each group of equal confidence, per position.
    starts = np.r_[0, np.flatnonzero(ranked[1:] != ranked[:-1]) + 1]
    ends = np.r_[starts[1:], n]
    sizes = ends - starts
    before = np.r_[0.0, np.cumsum(hits)][starts]  # right answers kept before the group
    share = np.add.reduceat(hits, starts) / sizes  # the group's accuracy
    group = np.repeat(np.arange(len(starts)), sizes)
    k = np.arange(1, n + 1)
    kept_right = before[group] + (k - starts[group]) * share[group]
    return k / n, kept_right / k
