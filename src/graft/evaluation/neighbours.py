"""Which images are copies of each other, and which sit far from all the others, from their
perceptual hashes and body features.

A copy that was resized and re-encoded keeps its perceptual hash within a few bits and its body
features at a cosine similarity near 1; a crop moves the hash but not the features much. Both
are searched all-pairs in blocks, so 10,000 images cost a few seconds and bounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A pair is a copy when its body features alone are this close (a crop, a heavy re-encode), or
# when its perceptual hashes differ by at most HASH_BITS of 64 and its features agree to
# HASH_SIMILARITY (a hash alone also matches unrelated pictures of one simple layout).
FEATURE_SIMILARITY = 0.97
HASH_BITS = 8
HASH_SIMILARITY = 0.85
_BLOCK = 1024


@dataclass(frozen=True)
class Pair:
    """Two images found to be copies.

    Attributes:
        first: Index of one image.
        second: Index of the other (``first < second``).
        similarity: Cosine similarity of their features (1.0: byte-identical files).
        bits: Hash bits that differ (-1: unknown).
        how: ``identical`` (same bytes), ``hash`` (hash and features) or ``features``.
    """

    first: int
    second: int
    similarity: float
    bits: int
    how: str


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _hash_bits(hashes: np.ndarray, rows: slice) -> np.ndarray:
    """Differing bits between the hashes in ``rows`` and all hashes."""
    return np.bitwise_count(hashes[rows, None] ^ hashes[None, :]).astype(np.int16)


def copy_pairs(
    features: np.ndarray, hashes: np.ndarray, digests: list[str | None], *, known: np.ndarray | None = None
) -> list[Pair]:
    """Every pair of images that are copies: byte-identical, or close by hash and features, or
    by features alone (see the bars above).

    Args:
        features: ``(n, dim)`` body features (rows of NaN where an image has none).
        hashes: ``(n,)`` uint64 perceptual hashes.
        digests: Each file's content digest (None: unread).
        known: ``(n,)`` bool, which rows have features and hashes.
    """
    n = len(hashes)
    ok = np.ones(n, bool) if known is None else known
    x = unit_rows(np.nan_to_num(features))
    h = hashes.astype(np.uint64)
    found: dict[tuple[int, int], Pair] = {}
    for start in range(0, n, _BLOCK):
        rows = slice(start, min(n, start + _BLOCK))
        sims = x[rows] @ x.T
        bits = _hash_bits(h, rows)
        close = (sims >= FEATURE_SIMILARITY) | ((bits <= HASH_BITS) & (sims >= HASH_SIMILARITY))
        for i, j in zip(*np.nonzero(close), strict=True):
            i += start
            if i < j and ok[i] and ok[j]:
                s, b = float(sims[i - start, j]), int(bits[i - start, j])
                how = "hash" if b <= HASH_BITS else "features"
                found[(i, j)] = Pair(int(i), int(j), s, b, how)
    for i, j in _identical(digests):
        found[(i, j)] = Pair(i, j, 1.0, 0, "identical")
    return sorted(found.values(), key=lambda p: (p.first, p.second))


def _identical(digests: list[str | None]) -> list[tuple[int, int]]:
    """Index pairs of files with equal digests."""
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        if d is not None:
            groups.setdefault(d, []).append(i)
    return [(a, b) for g in groups.values() for k, a in enumerate(g) for b in g[k + 1 :]]


def isolation(features: np.ndarray, k: int = 5) -> np.ndarray:
    """Each image's cosine distance to its ``k``-th nearest other image, high for an image unlike
    anything else in the data."""
    x = unit_rows(features)
    n = len(x)
    k = max(1, min(k, n - 1))
    out = np.zeros(n, dtype=np.float32)
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        sims = x[start:stop] @ x.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
        out[start:stop] = 1.0 - np.where(np.isfinite(kth), kth, -1.0)
    return out


def far_out(scores: np.ndarray, fence: float = 3.0) -> float:
    """Tukey's far-out fence of ``scores``: Q3 + ``fence`` x IQR."""
    q1, q3 = np.percentile(scores, [25, 75])
    return float(q3 + fence * (q3 - q1))
