"""Multi-label datasets: a CSV of ``id,labels`` with the labels of each image separated by spaces
(fastai's and Kaggle Planet's format; an empty field means "none of the classes")."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from graft.data._csv import NA_LABELS, match_rows
from graft.data._scan import Scan
from graft.data._split import stratified_split
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import read_csv_rows
from graft.infrastructure.text import plural, preview

# Label columns that mean "several labels per image" when graft is not told either way.
MULTI_LABEL_COLUMNS = ("labels", "tags")
NONE_GROUP = "\x00none"  # the split group of images with no label (not a possible class name)


def _read(path: Path) -> list[list[str]]:
    return read_csv_rows(path, "labels file", empty_hint="; it needs a header row such as 'id,labels'")


def label_columns(path: Path, rows: list[list[str]]) -> tuple[int, int, list[str]]:
    """``(id column, label column, header)`` of a labels CSV's ``rows``: ``id`` (else the first
    column) and ``label``/``labels``/``tags`` (else the first other column)."""
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise GraftError(f"labels file {path} needs an id and a labels column; its header is {rows[0]}")
    lower = [h.lower() for h in header]
    id_col = lower.index("id") if "id" in lower else 0
    names = [n for n in ("label", *MULTI_LABEL_COLUMNS) if n in lower and lower.index(n) != id_col]
    label_col = lower.index(names[0]) if names else next(i for i in range(len(header)) if i != id_col)
    return id_col, label_col, header


def is_multi_label_csv(path: Path) -> bool:
    """Whether a labels CSV's label column is named like a list of labels (``labels``, ``tags``)."""
    try:
        _, label_col, header = label_columns(path, _read(path))
    except GraftError:
        return False  # the single-label reader says what is wrong with the file
    return header[label_col].lower() in MULTI_LABEL_COLUMNS


def read_multilabel_csv(path: Path) -> tuple[dict[str, tuple[str, ...]], str, list[str]]:
    """id -> its sorted, distinct labels (empty: none of the classes), the id header, and notes.

    A label listed twice in one row counts once (noted); a repeated id keeps its first row (noted
    when the rows differ). Rows without an id are ignored (noted). A field that is a missing-value
    marker (``nan``, ``NA``...: what pandas writes for an empty list) means none of the classes.
    """
    rows = _read(path)
    id_col, label_col, header = label_columns(path, rows)
    mapping: dict[str, tuple[str, ...]] = {}
    repeated_in_row, no_id, conflicts, duplicates, missing = 0, 0, [], 0, 0
    for row in rows[1:]:
        cells = [row[i].strip() if i < len(row) else "" for i in (id_col, label_col)]
        if not cells[0]:
            no_id += 1
            continue
        marked = cells[1] in NA_LABELS and cells[1] != ""
        missing += marked  # pandas writes a missing list as NaN: read as none of the classes
        tokens = [] if marked else cells[1].split()
        labels = tuple(sorted(set(tokens)))
        repeated_in_row += len(labels) < len(tokens)
        if cells[0] not in mapping:
            mapping[cells[0]] = labels
        elif mapping[cells[0]] == labels:
            duplicates += 1
        else:
            conflicts.append((cells[0], mapping[cells[0]], labels))
    name = path.name
    if not mapping:
        raise GraftError(f"labels file {path} has no rows with an id")
    notes = []
    if repeated_in_row:
        notes.append(f"{_rows(repeated_in_row, name, 'lists', 'list')} a label twice; counted once")
    if duplicates:
        notes.append(f"{plural(duplicates, 'duplicate row')} of {name} ignored")
    if conflicts:
        key, first, other = conflicts[0]
        notes.append(
            f"{_rows(len(conflicts), name, 'repeats', 'repeat')} an id with other labels; kept the first "
            f"(e.g. {key!r}: {' '.join(first)!r}, not {' '.join(other)!r})"
        )
    if no_id:
        notes.append(f"{plural(no_id, 'row')} of {name} without an id ignored")
    if missing:
        notes.append(
            f"{_rows(missing, name, 'holds', 'hold')} a missing-value marker (e.g. nan): none of the classes"
        )
    empty = sum(1 for v in mapping.values() if not v)
    if empty:
        have = "has" if empty == 1 else "have"
        notes.append(f"{plural(empty, 'image')} of {name} {have} no labels: none of the classes")
    return mapping, header[id_col], notes


def load_multilabel_csv(
    root: Path, labels: Path, images: Path | None, fractions: dict[str, float], seed: int, scan: Scan
) -> tuple[list[str], dict[str, list[tuple[Path, tuple[int, ...]]]]]:
    """Classes and ``split -> [(path, label indices)]`` of a multi-label CSV beside its images.

    The split is stratified by each image's rarest label (images with no label form a group of
    their own), so a rare class is held out in proportion like a common one.
    """
    mapping, id_header, notes = read_multilabel_csv(labels)
    scan.notes.extend(notes)
    _, found = match_rows(list(mapping), id_header, labels, root, images, scan)
    good = set(scan.good(sorted(set(found.values()))))
    items: dict[Path, tuple[str, ...]] = {}
    for key, path in found.items():
        if path in good and path not in items:
            items[path] = mapping[key]
    counts = Counter(label for labels_ in items.values() for label in labels_)
    classes = sorted(counts)
    if len(classes) < 2:
        raise GraftError(
            f"{labels.name} names {len(classes)} class{'es' if len(classes) != 1 else ''} "
            f"({preview(classes)}): multi-label training needs at least two"
        )
    index = {c: i for i, c in enumerate(classes)}
    groups: dict[str, list[Path]] = {}
    for path, names in items.items():
        rarest = min(names, key=lambda c: (counts[c], c)) if names else NONE_GROUP
        groups.setdefault(rarest, []).append(path)
    parts, _ = stratified_split(groups, fractions, seed)
    splits = {
        name: sorted(
            ((p, tuple(index[c] for c in items[p])) for ps in by_group.values() for p in ps),
            key=lambda s: s[0],
        )
        for name, by_group in parts.items()
    }
    _note_unseen(classes, splits, scan)
    return classes, splits


def _note_unseen(classes: list[str], splits: dict[str, list], scan: Scan) -> None:
    """Note each class that no training image has: the model cannot learn it."""
    in_train = {i for _, labels in splits["train"] for i in labels}
    unseen = [c for i, c in enumerate(classes) if i not in in_train]
    if unseen:
        one = len(unseen) == 1
        scan.notes.append(
            f"{plural(len(unseen), 'class', 'classes')} {'occurs' if one else 'occur'} only in held-out "
            f"images, never in train ({preview(unseen)}): the model cannot learn {'it' if one else 'them'}"
        )


def _rows(n: int, name: str, one: str, many: str) -> str:
    """``1 row of labels.csv lists`` / ``3 rows of labels.csv list``."""
    return f"{plural(n, 'row')} of {name} {one if n == 1 else many}"


def label_counts(labels: list[tuple[int, ...]], num_classes: int) -> list[int]:
    """Images per class among multi-label ``labels``."""
    counts = [0] * num_classes
    for row in labels:
        for i in row:
            counts[i] += 1
    return counts
