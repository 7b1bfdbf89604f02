"""Byte-identical image files in two splits (a val image that is also in train, say)."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path


def _digest(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "blake2b").hexdigest()
    except OSError:
        return None  # vanished or unreadable: not a duplicate of anything


def cross_split_duplicates(splits: dict[str, list[Path]]) -> list[tuple[str, Path, str, Path]]:
    """Files with a byte-identical copy in an earlier split.

    Files are grouped by size first and only sizes that occur in two splits are hashed, so a
    dataset without duplicates costs one ``stat`` per file.

    Args:
        splits: Split name -> files, in split order (``train``, ``val``, ``test``).

    Returns:
        ``(earlier split, its file, later split, the copy)`` for each file that has a copy in an
        earlier split, matched to the earliest such split; sorted by split, then path.
    """
    names = list(splits)
    by_size: dict[int, list[tuple[int, Path]]] = defaultdict(list)
    for i, paths in enumerate(splits.values()):
        for p in paths:
            try:
                by_size[os.stat(p).st_size].append((i, p))
            except OSError:
                continue
    found = []
    for group in by_size.values():
        if len({i for i, _ in group}) < 2:
            continue
        by_hash: dict[str, list[tuple[int, Path]]] = defaultdict(list)
        for i, p in group:
            digest = _digest(p)
            if digest is not None:
                by_hash[digest].append((i, p))
        for same in by_hash.values():
            first: dict[int, Path] = {}
            for i, p in sorted(same):
                if first and min(first) < i:
                    j = min(first)
                    found.append((names[j], first[j], names[i], p))
                first.setdefault(i, p)
    return sorted(found, key=lambda d: (names.index(d[2]), names.index(d[0]), d[3]))


def describe(found: list[tuple[str, Path, str, Path]], root: Path) -> str:
    """One line: how many copies, per pair of splits, and one example pair (paths under ``root``)."""

    def rel(p: Path) -> str:
        return Path(os.path.relpath(p, root)).as_posix()

    pairs: dict[str, int] = defaultdict(int)
    for a, _, b, _ in found:
        pairs[f"{a}/{b}"] += 1
    a, pa, b, pb = found[0]
    n = len(found)
    return (
        f"{n} {'images' if n > 1 else 'image'} in a held-out split {'are' if n > 1 else 'is'} byte-identical "
        f"to an image in an earlier split ({', '.join(f'{k}: {v}' for k, v in pairs.items())}), e.g. "
        f"{rel(pb)} ({b}) = {rel(pa)} ({a}); kept, but held-out scores may be optimistic"
    )
