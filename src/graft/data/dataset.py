"""Datasets on disk: layout detection, labels, splits."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from graft.data._csv import group_labeled, match_rows, read_labels_csv
from graft.data._multilabel import is_multi_label_csv, label_counts, load_multilabel_csv
from graft.data._record import record_entry
from graft.data._scan import (
    VAL_NAMES,
    Scan,
    check_fraction,
    child,
    classes_from,
    descend,
    skipped_line,
    subdirs,
)
from graft.data._split import stratified_split
from graft.data.images import list_images
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import inside
from graft.infrastructure.text import plural, preview

if TYPE_CHECKING:
    import torch

_MAX_SUMMARY_ROWS = 30


@dataclass(frozen=True)
class Sample:
    """One image file and its class index (None for unlabeled images); in a multi-label dataset,
    the sorted tuple of its class indices (empty: none of the classes)."""

    path: Path
    label: int | tuple[int, ...] | None


def _labeled(groups: dict[str, list[Path]], classes: list[str], where: Path) -> list[Sample]:
    """Samples for class folders of a val/test split; a class unknown to train is an error."""
    index = {c: i for i, c in enumerate(classes)}
    for c, imgs in groups.items():
        if imgs and c not in index:
            near = [k for k in classes if k.casefold() == c.casefold()]  # Cat/ in train, cat/ in val
            hint = f"; it differs only in case from {near[0]!r}" if near else f" ({preview(classes)})"
            raise GraftError(f"class folder {c!r} in {where} is not a class in train/{hint}")
    return sorted((Sample(p, index[c]) for c, imgs in groups.items() for p in imgs), key=lambda s: s.path)


def _split_groups(
    groups: dict[str, list[Path]], classes: list[str], fractions: dict[str, float], seed: int, scan: Scan
) -> dict[str, list[Sample]]:
    """Stratified split of class -> paths into Samples, with one note per split about small classes."""
    index = {c: i for i, c in enumerate(classes)}
    parts, missing = stratified_split({c: groups[c] for c in classes}, fractions, seed)
    total = sum(len(groups[c]) for c in classes)
    for name, frac in fractions.items():
        absent = missing[name]
        if frac == 0 and name == "val":
            scan.notes.append("no val split (valid_split 0): training keeps its last epoch")
        elif frac > 0 and not any(parts[name].values()):
            scan.notes.append(f"the {name} split is empty: {total} images x {frac} rounds to 0")
        elif frac > 0 and absent:
            ones = sum(len(groups[c]) == 1 for c in absent)
            scan.notes.append(
                f"{plural(len(absent), 'class has', 'classes have')} too few images for the {name} split"
                f" and {'has' if len(absent) == 1 else 'have'} none there"
                f" ({ones} have a single image: kept in train only; e.g. {', '.join(absent[:3])})"
            )
    return {
        name: sorted((Sample(p, index[c]) for c, ps in by_class.items() for p in ps), key=lambda s: s.path)
        for name, by_class in parts.items()
    }


def _unlabeled(folder: Path, scan: Scan) -> list[Sample]:
    return [Sample(p, None) for p in scan.good(list_images(folder))]


def _load_folders(base: Path, valid_split: float, test_split: float, seed: int, scan: Scan) -> tuple:
    """``train/<class>`` + optional ``val|valid|validation/<class>`` + optional ``test/``."""
    train_dir = child(base, "train")
    assert train_dir is not None
    train = scan.class_folders(train_dir)
    classes = classes_from(train, train_dir, scan)
    scan.loose(train_dir)
    val_dir = child(base, *VAL_NAMES)
    test_dir = child(base, "test")
    others = [f"{d.name}/" for d in subdirs(base) if d not in (train_dir, val_dir, test_dir)]
    if others:  # e.g. graft organize's train_valid/, for a final run: graft train DATA/train_valid
        read = [f"{d.name}/" for d in (train_dir, val_dir, test_dir) if d is not None]
        both = ", ".join(read[:-1]) + " and " + read[-1] if len(read) > 1 else read[0]
        scan.notes.append(f"not read, beside {both}: {preview(others, 5)}")
    fractions = {}
    if val_dir is None:
        fractions["val"] = valid_split
    if test_split > 0 and test_dir is None:
        fractions["test"] = test_split
    splits = _split_groups(train, classes, fractions, seed, scan)
    if val_dir is not None:
        val = scan.class_folders(val_dir)
        if not val:
            raise GraftError(f"{val_dir} has no class folders: expected the same class folders as train/")
        splits["val"] = _labeled(val, classes, val_dir)
        scan.split_dirs["val"] = val_dir
        scan.loose(val_dir)
    if test_dir is not None:
        if test_split > 0:
            scan.notes.append(f"test_split ignored: {test_dir.name}/ is used as the test split")
        test = scan.class_folders(test_dir)
        if any(test.values()) or any(d.parent == test_dir for d in scan.lost):  # lost: warned below
            splits["test"] = _labeled(test, classes, test_dir)
            scan.split_dirs["test"] = test_dir
            scan.loose(test_dir)
        elif list_images(test_dir):
            splits["test"] = _unlabeled(test_dir, scan)
        else:
            scan.notes.append(f"{test_dir.name}/ has no images; no test split")
    return classes, splits


def _load_split(base: Path, valid_split: float, test_split: float, seed: int, scan: Scan) -> tuple:
    """``<class>/*`` split by fractions."""
    groups = scan.class_folders(base)
    classes = classes_from(groups, base, scan)
    scan.loose(base)
    fractions = {"val": valid_split} | ({"test": test_split} if test_split > 0 else {})
    return classes, _split_groups(groups, classes, fractions, seed, scan)


def _load_csv(
    root: Path,
    labels: Path,
    images: Path | None,
    valid_split: float,
    test_split: float,
    seed: int,
    scan: Scan,
) -> tuple:
    """A labels CSV (id, label) beside a flat folder of images."""
    mapping, id_header, csv_notes = read_labels_csv(labels)
    scan.notes.extend(csv_notes)
    folder, found = match_rows(list(mapping), id_header, labels, root, images, scan)
    groups, lost = group_labeled(found, mapping, scan)
    classes = classes_from(groups, folder, scan, lost)
    fractions = {"val": valid_split} | ({"test": test_split} if test_split > 0 else {})
    splits = _split_groups(groups, classes, fractions, seed, scan)
    test_dir = child(root, "test")
    if test_dir is not None and test_dir != folder and list_images(test_dir):
        if test_split == 0:
            splits["test"] = _unlabeled(test_dir, scan)
        else:
            scan.notes.append(
                f"unlabeled {test_dir.name}/ not used: test_split > 0 gives a labeled test split"
            )
    return classes, splits


def _load_multilabel(
    root: Path,
    labels: Path,
    images: Path | None,
    valid_split: float,
    test_split: float,
    seed: int,
    scan: Scan,
) -> tuple:
    """A multi-label CSV (id, space-separated labels) beside a flat folder of images."""
    fractions = {"val": valid_split} | ({"test": test_split} if test_split > 0 else {})
    classes, rows = load_multilabel_csv(root, labels, images, fractions, seed, scan)
    splits = {name: [Sample(p, labels_) for p, labels_ in part] for name, part in rows.items()}
    test_dir = child(root, "test")
    if test_split == 0 and test_dir is not None and list_images(test_dir):
        splits["test"] = _unlabeled(test_dir, scan)
    return classes, splits


@dataclass
class ImageData:
    """A labeled image dataset split into train / val / (test).

    Attributes:
        root: The dataset folder the user gave.
        layout: ``"folders"`` (train/ + val|valid|validation/ [+ test/]), ``"split"`` (class
            folders split by fractions) or ``"csv"`` (labels file beside a flat folder).
        classes: Sorted class names; a Sample's label indexes this list.
        splits: ``"train"`` and ``"val"`` always; ``"test"`` when present. An unlabeled flat
            test/ folder gives Samples with label None.
        skipped: (path, reason) for every image file that was skipped (undecodable, truncated,
            empty, ...); each was also warned about as a
            :class:`~graft.infrastructure.errors.SkippedFileWarning`.
        notes: Human-readable remarks made while loading (e.g. small classes kept in train, hidden
            files, unreadable folders and files beside the class folders ignored, classes with no
            val images, extreme imbalance, byte-identical images across splits).
    """

    root: Path
    layout: str
    classes: list[str]
    splits: dict[str, list[Sample]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    multi_label: bool = False

    @classmethod
    def from_folder(
        cls,
        root: str | Path,
        *,
        labels: str | Path | None = None,
        valid_split: float = 0.2,
        test_split: float = 0.0,
        seed: int = 0,
        images: str | Path | None = None,
        multi_label: bool | None = None,
    ) -> ImageData:
        """Load a dataset, detecting its layout. Raises GraftError with a one-line reason.

        Args:
            root: Dataset folder.
            labels: A CSV (header row; id and label columns) for the ``csv`` layout. A relative
                path that does not exist is also looked up inside ``root``.
            valid_split: Fraction of all labeled images held out for validation (when there is
                no val folder).
            test_split: Fraction held out for a labeled test split (when there is no test folder).
            seed: Split seed; the same seed gives the same split.
            images: ``csv`` layout only: the folder holding the images (default: root or the
                subfolder of root whose file names match the most CSV ids).
            multi_label: Read the labels CSV as space-separated labels per image (any number,
                none included). None: when its label column is named ``labels`` or ``tags``.
        """
        root = Path(os.path.abspath(Path(root).expanduser()))
        if not root.exists():
            raise GraftError(f"dataset folder {root} does not exist")
        if not root.is_dir():
            raise GraftError(f"dataset path {root} is not a folder")
        check_fraction("valid_split", valid_split)
        check_fraction("test_split", test_split)
        if valid_split + test_split >= 1:
            raise GraftError(f"valid_split + test_split must be below 1, got {valid_split} + {test_split}")
        scan = Scan(root)
        if labels is not None:
            labels_path = Path(labels).expanduser()
            if not labels_path.is_absolute() and not labels_path.exists() and (root / labels_path).exists():
                labels_path = root / labels_path
            if labels_path.is_dir():
                raise GraftError(f"labels file {labels_path} is a folder, not a CSV file")
            folder = None
            if images is not None:
                folder = Path(os.path.abspath(root / Path(images).expanduser()))
                if not folder.is_dir():
                    raise GraftError(f"images folder {folder} does not exist")
                if not inside(folder, root):
                    raise GraftError(f"images folder {folder} must be inside the dataset folder {root}")
            layout = "csv"
            if multi_label is None:
                multi_label = labels_path.is_file() and is_multi_label_csv(labels_path)
            load = _load_multilabel if multi_label else _load_csv
            classes, splits = load(root, labels_path, folder, valid_split, test_split, seed, scan)
        else:
            if multi_label:
                raise GraftError("multi-label data needs a labels CSV (id,labels: space-separated labels)")
            base = descend(root, scan)
            if child(base, "train") is not None:
                layout = "folders"
                classes, splits = _load_folders(base, valid_split, test_split, seed, scan)
            else:
                layout = "split"
                if not subdirs(base) and not list_images(base):
                    raise GraftError(f"no images found in {root}")
                classes, splits = _load_split(base, valid_split, test_split, seed, scan)
        splits.setdefault("val", [])
        ordered = {k: splits[k] for k in ("train", "val", "test") if k in splits}
        scan.check_splits(classes, ordered)
        scan.finish({k: [s.path for s in v if s.label is not None] for k, v in ordered.items()})
        return cls(root, layout, classes, ordered, scan.skipped, scan.notes, bool(multi_label))

    @classmethod
    def from_record(cls, root: str | Path, record: dict) -> ImageData:
        """Rebuild from :meth:`to_record` output, resolving relative paths under ``root``."""
        root = Path(os.path.abspath(Path(root).expanduser()))
        if not root.is_dir():
            raise GraftError(f"dataset folder {root} does not exist")
        try:
            classes = [str(c) for c in record["classes"]]
            rows_by_split = dict(record["splits"])
            layout = str(record.get("layout", "record"))
        except (KeyError, TypeError, ValueError):
            raise GraftError("not a graft dataset record: it needs 'classes' and 'splits'") from None
        index = {c: i for i, c in enumerate(classes)}
        splits: dict[str, list[Sample]] = {}
        missing: list[str] = []
        for name, rows in rows_by_split.items():
            samples = [Sample(*record_entry(root, row, index)) for row in rows]
            missing += [str(s.path.relative_to(root)) for s in samples if not s.path.is_file()]
            splits[str(name)] = samples
        if missing:
            raise GraftError(
                f"{len(missing)} files of the dataset record are missing under {root}, e.g. {missing[0]}"
            )
        splits.setdefault("train", [])
        splits.setdefault("val", [])
        return cls(root, layout, classes, splits, multi_label=bool(record.get("multi_label", False)))

    def to_record(self) -> dict:
        """JSON-ready description of the exact split used (paths relative to root)."""
        root = Path(os.path.abspath(self.root))

        def rel(p: Path) -> str:
            return Path(os.path.relpath(os.path.abspath(p), root)).as_posix()

        record = {
            "root": str(root),
            "layout": self.layout,
            "classes": list(self.classes),
            "splits": {
                name: [[rel(s.path), self.label_names(s.label)] for s in samples]
                for name, samples in self.splits.items()
            },
        }
        return record | ({"multi_label": True} if self.multi_label else {})

    def label_names(self, label: int | tuple[int, ...] | None) -> str | list[str] | None:
        """A sample's label as class names: one name, a list of them (multi-label), or None."""
        if label is None:
            return None
        if isinstance(label, tuple):
            return [self.classes[i] for i in label]
        return self.classes[label]

    def targets(self, split: str) -> torch.Tensor:
        """The labels of a split as the loss takes them: ``(n,)`` class indices, or for a
        multi-label dataset an ``(n, classes)`` float tensor of 0/1."""
        import torch  # here: loading a dataset's file list does not need torch

        samples = self.splits.get(split, [])
        if not self.multi_label:
            return torch.tensor([s.label for s in samples], dtype=torch.long)
        out = torch.zeros(len(samples), len(self.classes))
        for row, s in enumerate(samples):
            out[row, list(s.label or ())] = 1.0
        return out

    def class_counts(self, split: str = "train") -> list[int]:
        """Images per class in a split (multi-label: images that have the class)."""
        labels = [s.label for s in self.splits.get(split, []) if s.label is not None]
        if self.multi_label:
            return label_counts(labels, len(self.classes))
        return [sum(1 for label in labels if label == i) for i in range(len(self.classes))]

    def imbalance(self, split: str = "train") -> float:
        """Largest / smallest class count in a split, over classes with images (1.0 if fewer than two)."""
        sized = [n for n in self.class_counts(split) if n > 0]
        return max(sized) / min(sized) if len(sized) >= 2 else 1.0

    def summary(self) -> str:
        """Multi-line table: images per class (rows) and split (columns), plus totals."""
        cols = list(self.splits)
        counts = {c: dict.fromkeys(cols, 0) for c in [*self.classes, None]}
        for name, samples in self.splits.items():
            for s in samples:
                names = self.label_names(s.label)
                for c in names if isinstance(names, list) else [names]:
                    counts[c][name] += 1
        names = list(self.classes)
        hidden: list[str] = []
        if len(names) > _MAX_SUMMARY_ROWS:
            by_size = sorted(names, key=lambda c: (-sum(counts[c].values()), c))
            names, hidden = by_size[:_MAX_SUMMARY_ROWS], by_size[_MAX_SUMMARY_ROWS:]
        rows = [(c, [counts[c][k] for k in cols]) for c in names]
        if hidden:
            rows.append((f"... {len(hidden)} more classes", None))
        if any(counts[None].values()):
            rows.append(("(unlabeled)", [counts[None][k] for k in cols]))
        totals = [len(self.splits[k]) for k in cols]
        width = max([len("class"), len("(unlabeled)")] + [len(c) for c, v in rows if v is not None])
        widths = [max(len(k), len(str(t))) for k, t in zip(cols, totals, strict=True)]

        def line(label: str, values: list) -> str:
            cells = "  ".join(str(v).rjust(w) for v, w in zip(values, widths, strict=True))
            return f"{label.ljust(width)}  {cells}".rstrip()

        kind = ", multi-label" if self.multi_label else ""
        out = [f"{len(self.classes)} classes{kind}, layout {self.layout!r}, root {self.root}"]
        out.append(line("class", cols))
        out += [c if v is None else line(c, v) for c, v in rows]
        out.append(line("total", totals))
        if self.multi_label:
            none = [sum(1 for s in self.splits[k] if s.label == ()) for k in cols]
            out.insert(-1, line("(no label)", none))
        ratio = self.imbalance()
        if ratio >= 2:
            out.append(f"imbalance in train: largest/smallest class {ratio:.1f}:1")
        out.append(skipped_line(self.skipped))
        return "\n".join(out)


def load_class_folder(folder: str | Path, classes: list[str]) -> tuple[list[Sample], list[tuple[Path, str]]]:
    """Samples from a folder of class folders, labeled against a model's ``classes``.

    A model class with no folder is fine (it just has no samples); a class folder with images that
    is not one of ``classes`` is a GraftError. Unreadable images are skipped (and warned about).
    """
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    if not folder.is_dir():
        raise GraftError(f"folder {folder} does not exist")
    scan = Scan()
    groups = scan.class_folders(folder)
    if not groups:
        raise GraftError(
            f"{folder} has no class folders: expected one folder per class, named like the model's"
        )
    index = {c: i for i, c in enumerate(classes)}
    for c, imgs in groups.items():
        if imgs and c not in index:
            raise GraftError(
                f"class folder {c!r} in {folder} is not one of the model's classes: {preview(classes)}"
            )
    samples = sorted((Sample(p, index[c]) for c, imgs in groups.items() for p in imgs), key=lambda s: s.path)
    if not samples:
        raise GraftError(f"no images found in the class folders of {folder}")
    for d, why in scan.lost.items():  # e.g. every image of the class undecodable: scores leave it out
        warnings.warn(f"class {d.name!r} has no usable images in {d}: {why}", UserWarning, stacklevel=2)
    return samples, scan.skipped
