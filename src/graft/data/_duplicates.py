"""Byte-identical image files in two splits (a val image that is also in train, say)."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

# Files that share a size are compared by a hash of their first bytes, and only files that share
# that too are hashed whole: a big dataset has many size collisions, few prefix collisions.
_PREFIX = 16 * 1024


def _digest(path: Path, limit: int | None = None) -> str | None:
    """blake2b of the file (or of its first ``limit`` bytes); None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            if limit is not None:
                return hashlib.blake2b(f.read(limit)).hexdigest()
            return hashlib.file_digest(f, "blake2b").hexdigest()
    except OSError:
        return None  # vanished or unreadable: not a duplicate of anything


def _split_by(
    group: list[tuple[int, Path]], key: Callable[[Path], str | None]
) -> list[list[tuple[int, Path]]]:
    """Sub-groups of ``group`` with equal ``key(path)`` that span two splits or more."""
    parts: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for i, p in group:
        k = key(p)
        if k is not None:
            parts[k].append((i, p))
    return [g for g in parts.values() if len({i for i, _ in g}) > 1]


def cross_split_duplicates(splits: dict[str, list[Path]]) -> list[tuple[str, Path, str, Path]]:
    """Files with a byte-identical copy in an earlier split.

    Files are grouped by size, then by a hash of their first 16 KiB, then by a hash of the whole
    file, and each stage only looks at groups that span two splits, so a dataset without
    duplicates costs one ``stat`` per file and a few small reads.

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
    for size, group in by_size.items():
        if len({i for i, _ in group}) < 2:
            continue
        same = _split_by(group, lambda p: _digest(p, _PREFIX))
        if size > _PREFIX:  # else the prefix was the whole file
            same = [g for part in same for g in _split_by(part, _digest)]
        for copies in same:
            first: dict[int, Path] = {}
            for i, p in sorted(copies):
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
