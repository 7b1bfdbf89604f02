"""Stratified, seeded train/val/test splitting that never crashes on tiny classes."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def _largest_remainder(
    sizes: dict[str, int], frac: float, caps: dict[str, int], ties: dict[str, float]
) -> dict[str, int]:
    """Per-class quotas summing to round(N * frac) as closely as the caps allow.

    Each class first gets floor(n * frac) (capped); the leftover units go to the classes with
    the largest fractional remainders, then round-robin over any class with spare capacity.
    """
    total = sum(sizes.values())
    target = min(math.floor(total * frac + 0.5), sum(caps.values()))
    exact = {c: n * frac for c, n in sizes.items()}
    quota = {c: min(math.floor(exact[c]), caps[c]) for c in sizes}
    left = target - sum(quota.values())
    # Larger remainder first; bigger class next; a seeded per-class key breaks exact ties.
    order = sorted(sizes, key=lambda c: (-(exact[c] - math.floor(exact[c])), -sizes[c], ties[c]))
    while left > 0:
        progressed = False
        for c in order:
            if left == 0:
                break
            if quota[c] < caps[c]:
                quota[c] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return quota


def stratified_split(
    groups: dict[str, Sequence[T]], fractions: dict[str, float], seed: int
) -> tuple[dict[str, dict[str, list[T]]], dict[str, list[str]]]:
    """Split each class's items into ``"train"`` and the named held-out splits.

    Args:
        groups: Class name -> items (any order; they are sorted first so input order is irrelevant).
        fractions: Held-out split name -> fraction of ALL items, e.g. ``{"val": 0.2, "test": 0.1}``.
            Splits are filled in the given order.
        seed: Shuffle seed. Each class uses its own RNG seeded by ``(seed, class name)`` so adding
            or removing a class does not reshuffle the others.

    Returns:
        ``(split name -> class -> items, split name -> classes that got no item in that split)``.
        Every class keeps at least one item in train.
    """
    sizes = {c: len(items) for c, items in groups.items() if items}
    rngs = {c: random.Random(f"graft-split:{seed}:{c}") for c in sizes}
    ties = {c: rngs[c].random() for c in sizes}
    shuffled: dict[str, list[T]] = {}
    for c in sizes:
        items = sorted(groups[c])  # type: ignore[type-var]
        rngs[c].shuffle(items)
        shuffled[c] = items
    caps = {c: n - 1 for c, n in sizes.items()}  # at least one image per class stays in train
    out: dict[str, dict[str, list[T]]] = {name: {} for name in ("train", *fractions)}
    empty: dict[str, list[str]] = {}
    start = dict.fromkeys(sizes, 0)
    for name, frac in fractions.items():
        quota = _largest_remainder(sizes, frac, caps, ties) if frac > 0 else dict.fromkeys(sizes, 0)
        for c in sizes:
            out[name][c] = shuffled[c][start[c] : start[c] + quota[c]]
            start[c] += quota[c]
            caps[c] -= quota[c]
        empty[name] = sorted(c for c in sizes if quota[c] == 0)
    for c in sizes:
        out["train"][c] = shuffled[c][start[c] :]
    return out, empty
