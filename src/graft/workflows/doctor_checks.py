"""The checks of ``graft doctor``, each turning measured numbers into :class:`Finding` objects:
label errors, copies (within a split, across labels, across splits), outliers, oddities, balance."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graft.data.inspect import ImageFacts
from graft.evaluation.findings import Finding
from graft.evaluation.label_issues import LabelIssues
from graft.evaluation.neighbours import Pair, far_out, isolation
from graft.infrastructure.config import BALANCE_RATIO
from graft.infrastructure.text import plural

SPLIT_ORDER = ("train", "val", "test")
# An image is tiny when its shorter side is under this fraction of the data's median one (and
# always under TINY_PIXELS): the model's resize blows it up into a blur its peers are not.
TINY_FRACTION = 0.25
TINY_PIXELS = 16
# Longer side / shorter side at which the centre crop every view takes keeps a third or less.
ASPECT = 3.0
# Grey-level standard deviation (of 0-255) under which a picture is near-blank.
BLANK_SPREAD = 4.0
MIN_VAL_PER_CLASS = 10


@dataclass
class Item:
    """One image the doctor looked at."""

    path: Path
    split: str
    label: str | None


def label_findings(
    items: list[Item], labelled: np.ndarray, issues: LabelIssues, classes: list[str]
) -> list[Finding]:
    """A ``label_error`` finding for each flagged image (``labelled``: its index into ``items``)."""
    out = []
    for row in np.flatnonzero(issues.flagged):
        item = items[labelled[row]]
        p = issues.probs[row]
        best = int(issues.suggested[row])
        given = classes.index(item.label)
        out.append(
            Finding(
                item.path,
                "label_error",
                float(issues.score[row]),
                "relabel",
                classes[best],
                item.label,
                item.split,
                detail=f"labelled {item.label} (p={p[given]:.2f}); heads trained without it say "
                f"{classes[best]} (p={p[best]:.2f})",
            )
        )
    return out


def copy_findings(items: list[Item], pairs: list[Pair]) -> list[Finding]:
    """One finding per image that copies an earlier one (split order, then path): ``leak`` across
    splits, ``conflict`` under another label, ``duplicate`` otherwise; the closest copy counts."""
    best: dict[tuple[int, str], Finding] = {}
    for pair in pairs:
        keep, copy = sorted((pair.first, pair.second), key=lambda i: _order(items[i]))
        a, b = items[keep], items[copy]
        if a.split != b.split:
            issue, action = "leak", "quarantine"
        elif a.label is not None and b.label is not None and a.label != b.label:
            issue, action = "conflict", "review"
        else:
            issue, action = "duplicate", "quarantine"
        how = (
            "byte-identical"
            if pair.how == "identical"
            else f"cosine {pair.similarity:.3f}, hash {pair.bits} bits"
        )
        where = f"{a.split}/{a.label}" if issue != "duplicate" else a.label or a.split
        finding = Finding(
            b.path,
            issue,
            pair.similarity,
            action,
            None,
            b.label,
            b.split,
            a.path,
            f"{how}; copy of a {where} image",
        )
        if (copy, issue) not in best or best[(copy, issue)].score < finding.score:
            best[(copy, issue)] = finding
    return list(best.values())


def _split_rank(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def _order(item: Item) -> tuple[int, str]:
    return _split_rank(item.split), str(item.path)


def outlier_findings(items: list[Item], features: np.ndarray, index: np.ndarray) -> list[Finding]:
    """``outlier`` findings: images whose 5th-nearest other image is farther than Tukey's
    far-out fence of all such distances (``index``: each feature row's item)."""
    if len(index) < 10:
        return []
    scores = isolation(features)
    fence = far_out(scores)
    out = []
    for r in np.flatnonzero(scores > fence):
        item = items[index[r]]
        out.append(
            Finding(
                item.path,
                "outlier",
                float(scores[r]),
                "review",
                None,
                item.label,
                item.split,
                detail=f"cosine distance {scores[r]:.3f} to its 5th-nearest image (fence {fence:.3f})",
            )
        )
    return out


def oddity_findings(items: list[Item], facts: list[ImageFacts | None]) -> list[Finding]:
    """``tiny``, ``aspect`` and ``blank`` findings from each file's facts."""
    sides = [min(f.width, f.height) for f in facts if f is not None]
    if not sides:
        return []
    median = float(np.median(sides))
    tiny = max(TINY_PIXELS, TINY_FRACTION * median)
    out = []
    for item, f in zip(items, facts, strict=True):
        if f is None:
            continue
        short, long = sorted((f.width, f.height))
        base = dict(label=item.label, split=item.split)
        if short < tiny:
            out.append(
                Finding(
                    item.path,
                    "tiny",
                    1 - short / tiny,
                    "review",
                    **base,
                    detail=f"{f.width}x{f.height} px; the median shorter side is {median:.0f} px",
                )
            )
        if long >= ASPECT * short:
            out.append(
                Finding(
                    item.path,
                    "aspect",
                    long / max(short, 1),
                    "review",
                    **base,
                    detail=f"{f.width}x{f.height} px: the centre crop keeps {short / long:.0%} of it",
                )
            )
        if f.spread < BLANK_SPREAD:
            out.append(
                Finding(
                    item.path,
                    "blank",
                    1 - f.spread / BLANK_SPREAD,
                    "quarantine",
                    **base,
                    detail=f"grey levels vary by {f.spread:.1f} (of 255): near-blank",
                )
            )
    return out


def unreadable_findings(
    skipped: list[tuple[Path, str]], items: list[Item], facts: list[ImageFacts | None]
) -> list[Finding]:
    """``unreadable`` findings: files the dataset scan skipped, and listed files that failed to decode."""
    out = [Finding(p, "unreadable", 1.0, "quarantine", detail=why) for p, why in skipped]
    out += [
        Finding(
            i.path, "unreadable", 1.0, "quarantine", None, i.label, i.split, detail="could not be decoded"
        )
        for i, f in zip(items, facts, strict=True)
        if f is None
    ]
    return out


def balance(
    items: list[Item], classes: list[str], multi_label: bool = False
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Per split, the labelled images of each class (multi-label: labels are space-separated, an
    image counts once per class it has); and what the counts mean for training."""
    table: dict[str, dict[str, int]] = {}
    for split in sorted({i.split for i in items}, key=_split_rank):
        labels = [i.label for i in items if i.split == split and i.label is not None]
        counts = Counter(c for label in labels for c in (label.split(" ") if multi_label else [label]))
        if counts:
            table[split] = {c: counts.get(c, 0) for c in classes}
    return table, _balance_notes(table, multi_label)


def _balance_notes(table: dict[str, dict[str, int]], multi_label: bool) -> list[str]:
    """What graft train does about the balance (as ``--balance auto`` decides), and where val is
    thin. The scan's own note warns past 20:1 that accuracy then says little."""
    notes = []
    train = table.get("train", {})
    if train and min(train.values()) > 0 and not multi_label:
        big, small = max(train, key=train.get), min(train, key=train.get)
        ratio = train[big] / train[small]
        if ratio >= BALANCE_RATIO:
            notes.append(
                f"train's largest class has {ratio:.1f}x the images of its smallest ({big} {train[big]}, "
                f"{small} {train[small]}): graft train (--balance auto) weights the loss by inverse class "
                "frequency and keeps the epoch with the best val balanced accuracy"
            )
        else:
            notes.append(
                f"train's largest class has {ratio:.1f}x the images of its smallest (under "
                f"{BALANCE_RATIO:g}x): graft train uses it as it is"
            )
    if train and min(train.values()) == 0:
        notes.append(f"no train images of: {', '.join(c for c, n in train.items() if n == 0)}")
    val = table.get("val")
    if val:
        few = [c for c, n in val.items() if n < MIN_VAL_PER_CLASS]
        if few:
            notes.append(
                f"{plural(len(few), 'class', 'classes')} with fewer than {MIN_VAL_PER_CLASS} val images "
                f"({', '.join(few[:8])}{', ...' if len(few) > 8 else ''}): their val accuracy moves "
                "in steps of 10% or more"
            )
    return notes


def one_move_per_file(findings: list[Finding]) -> list[Finding]:
    """``findings`` (sorted) with at most one moving action per file, so ``doctor.csv`` applies as
    written: the first finding's move stands, later ones of the file become ``review``."""
    moving: dict[Path, tuple[str, str | None]] = {}
    for f in findings:
        if f.action not in ("relabel", "quarantine"):
            continue
        first = moving.setdefault(f.path, (f.action, f.suggested_label))
        if first != (f.action, f.suggested_label):
            f.action = "review"
    return findings
