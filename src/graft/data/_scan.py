"""Scanning helpers shared by the dataset layouts: class folders, skipped files, notes."""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from graft.data._audit import (
    Unlisted,
    audit_tree,
    case_note,
    coverage_note,
    imbalance_note,
    kinds,
    loose_entries,
    loose_note,
    warn,
)
from graft.data._duplicates import cross_split_duplicates, describe
from graft.data.images import Ignored, check_image, list_images, skip_kind, skipped_folder
from graft.infrastructure.errors import DuplicateImageWarning, GraftError, SkippedFileWarning
from graft.infrastructure.fileio import inside
from graft.infrastructure.text import plural, preview

VAL_NAMES = ("val", "valid", "validation")


class Scan:
    """Collects skipped files, what the listing left out, and notes while a dataset is being read.

    Args:
        root: The dataset folder; notes name files relative to it.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self.skipped: list[tuple[Path, str]] = []
        self.notes: list[str] = []
        self.ignored = Ignored()
        self.unlisted = Unlisted()  # unreadable folders, broken symlinks (loops go to ignored.loops)
        self.lost: dict[Path, str] = {}  # class folder with no usable image -> why, when files were lost
        self.split_dirs: dict[str, Path] = {}  # split name -> its folder, for splits read from folders

    def good(self, paths: Iterable[Path]) -> list[Path]:
        """The paths that pass check_image; the others are recorded and warned about (once each)."""
        ok = []
        for p in paths:
            reason = check_image(p)
            if reason is None:
                ok.append(p)
            else:
                self.skipped.append((p, reason))
                warnings.warn(f"skipping {p}: {reason}", SkippedFileWarning, stacklevel=2)
        return ok

    def class_folders(self, folder: Path) -> dict[str, list[Path]]:
        """Class name -> good images (recursive) for each non-hidden subfolder of ``folder``.

        What the listing leaves out is warned about and counted: unreadable folders, symlink
        loops, broken symlinks. A class folder left with no usable image because of such losses
        (or of skipped files) is recorded in ``lost`` with the reason.
        """
        groups = {}
        for d in subdirs(folder):
            loops, skipped, found = len(self.ignored.loops), len(self.skipped), Unlisted()
            audit_tree(d, found)
            groups[d.name] = self.good(list_images(d, recursive=True, ignored=self.ignored))
            for link, target in self.ignored.loops[loops:]:
                warnings.warn(
                    f"skipping {link}: symlink loop (it points to {target}, which contains it); not followed",
                    SkippedFileWarning,
                    stacklevel=2,
                )
            self.add_unlisted(found)
            why = None if groups[d.name] else lost_reason(d, self.skipped[skipped:], found)
            if why:
                self.lost[d] = why
        return groups

    def add_unlisted(self, found: Unlisted) -> None:
        """Warn about each entry of ``found`` (a SkippedFileWarning naming it) and keep it for the notes."""
        for path, reason in found.unreadable:
            msg = f"skipping {path}{os.sep}: cannot read the folder ({reason}); its images are left out"
            warnings.warn(msg, SkippedFileWarning, stacklevel=3)
        for link, target in found.loops:
            msg = f"skipping {link}: symlink loop (it points to {target}, which never leads to a file)"
            warnings.warn(msg, SkippedFileWarning, stacklevel=3)
        for path, reason in found.odd:
            warnings.warn(f"skipping {path}: {reason}", SkippedFileWarning, stacklevel=3)
        self.unlisted.unreadable += found.unreadable
        self.ignored.loops += found.loops
        self.unlisted.odd += found.odd

    def loose(self, folder: Path) -> None:
        """Note the files directly in ``folder`` beside its class folders (they belong to no class)."""
        label = self.rel(folder) if folder != self.root else folder.name
        note = loose_note(folder, loose_entries(folder), f"{label}/")
        if note:
            self.notes.append(note)

    def rel(self, path: Path) -> str:
        """``path`` relative to the dataset root when it is inside it, for notes."""
        if self.root is not None and inside(path, self.root):
            return Path(os.path.relpath(path, self.root)).as_posix()
        return str(path)

    def check_splits(self, classes: list[str], splits: dict[str, list]) -> None:
        """Warn (and note) about an extreme imbalance in train and classes absent from val or test.

        Args:
            classes: The class names.
            splits: Split name -> Samples (``.label`` indexes ``classes``; None if unlabeled).
        """
        counts = {
            name: Counter(i for s in samples for i in (s.label if isinstance(s.label, tuple) else [s.label]))
            for name, samples in splits.items()
        }
        train = {c: counts["train"][i] for i, c in enumerate(classes)}
        for note in (case_note(classes), imbalance_note(train)):
            if note:
                warn(note, self.notes)
        for name in ("val", "test"):
            samples = splits.get(name, [])
            if (not samples and name not in self.split_dirs) or any(s.label is None for s in samples):
                continue  # no such split (noted where it was made), or an unlabeled one
            missing = [c for i, c in enumerate(classes) if not counts.get(name, {}).get(i)]
            note = coverage_note(name, missing, classes, lambda c, n=name: self._absent(n, c, train[c]))
            if note:
                warn(note, self.notes)

    def _absent(self, split: str, cls: str, in_train: int) -> str:
        """Why class ``cls`` has no image in ``split``, for the warning."""
        folder = self.split_dirs.get(split)
        if folder is None:
            return f"{plural(in_train, 'image')} in all, none held out"
        d = folder / cls
        if d in self.lost:
            return f"{self.rel(d)}/: {self.lost[d]}"
        if not d.is_dir():
            return f"no {self.rel(d)}/ folder"
        return f"no usable image in {self.rel(d)}/"

    def finish(self, splits: dict[str, list[Path]]) -> None:
        """Notes on what the class-folder listing left out, and the duplicate check across splits.

        Args:
            splits: Split name -> the labeled files in it (unlabeled images are not scored, so a
                copy of one is harmless and not reported).
        """
        hidden, other, loops = self.ignored.hidden, self.ignored.other, self.ignored.loops
        if hidden:
            self.notes.append(
                f"{plural(len(hidden), 'hidden file or folder', 'hidden files or folders')} in the class "
                f"folders ignored (e.g. {self.rel(hidden[0])})"
            )
        if other:
            self.notes.append(
                f"{plural(len(other), 'file')} without an image extension in the class folders ignored "
                f"(e.g. {self.rel(other[0])})"
            )
        if loops:
            link, target = loops[0]
            self.notes.append(
                f"{plural(len(loops), 'symlink loop')} in the class folders not followed "
                f"(e.g. {self.rel(link)} -> {self.rel(target)})"
            )
        if self.unlisted.unreadable:
            (path, reason), n = self.unlisted.unreadable[0], len(self.unlisted.unreadable)
            its = "its" if n == 1 else "their"
            self.notes.append(
                f"{plural(n, 'folder')} could not be read; {its} images are left out "
                f"(e.g. {self.rel(path)}/: {reason})"
            )
        if self.unlisted.odd:
            (path, reason), n = self.unlisted.odd[0], len(self.unlisted.odd)
            what = plural(n, "broken symlink or special file", "broken symlinks or special files")
            self.notes.append(f"{what} ignored (e.g. {self.rel(path)}: {reason})")
        found = cross_split_duplicates(splits)
        if found:
            text = describe(found, self.root or Path.cwd())
            warnings.warn(text, DuplicateImageWarning, stacklevel=3)
            self.notes.append(text)


def skipped_line(skipped: list[tuple[Path, str]]) -> str:
    """The summary's last line: ``skipped: 3 files (2 truncated, 1 empty)``, most common reason first."""
    if not skipped:
        return "skipped: 0 files"
    parts = kinds(Counter(skip_kind(reason) for _, reason in skipped))
    return f"skipped: {plural(len(skipped), 'file')} ({parts})"


def lost_reason(folder: Path, skipped: list[tuple[Path, str]], found: Unlisted) -> str | None:
    """Why a class folder with no usable image has none, when something in it was left out; else None."""
    whole = [reason for path, reason in found.unreadable if path == folder]
    if whole:
        return f"cannot read the folder ({whole[0]})"
    parts = []
    if skipped:
        kind = kinds(Counter(skip_kind(reason) for _, reason in skipped))
        parts.append(f"{plural(len(skipped), 'image file')}, all skipped: {kind}")
    if found.unreadable:
        parts.append(f"{plural(len(found.unreadable), 'subfolder')} cannot be read")
    if found.loops:
        parts.append(plural(len(found.loops), "symlink loop"))
    if found.odd:
        parts.append(
            plural(len(found.odd), "broken symlink or special file", "broken symlinks or special files")
        )
    return ", ".join(parts) or None


def subdirs(folder: Path) -> list[Path]:
    """Subfolders of ``folder`` (symlinks followed) but hidden ones and ``_quarantine``, sorted; GraftError
    if it cannot be read."""
    try:
        entries = list(folder.iterdir())
    except OSError as e:
        raise GraftError(f"cannot read folder {folder}: {e.strerror or e}") from None
    return sorted(p for p in entries if not skipped_folder(p.name) and os.path.isdir(p))


def child(folder: Path, *names: str) -> Path | None:
    """First existing subfolder among ``names`` (case-insensitive, in the order given)."""
    dirs = {p.name.lower(): p for p in subdirs(folder)}
    return next((dirs[n] for n in names if n in dirs), None)


def check_fraction(name: str, value: float) -> None:
    """GraftError unless ``value`` is a finite number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise GraftError(f"{name} must be a number in [0, 1), got {value!r}")
    if not 0 <= value < 1:
        raise GraftError(f"{name} must be in [0, 1), got {value}")


def descend(root: Path, scan: Scan) -> Path:
    """Step into a lone wrapper folder (``malaria_subset/test_images/<class>``) holding the dataset."""
    base = root
    while True:
        subs = subdirs(base)
        if len(subs) != 1 or list_images(base) or list_images(subs[0]) or not subdirs(subs[0]):
            break
        if subs[0].name.lower() in ("train", *VAL_NAMES, "test"):
            break
        base = subs[0]
    if base != root:
        scan.notes.append(f"using the class folders in {base.relative_to(root).as_posix()}/")
    return base


def classes_from(
    groups: dict[str, list[Path]], where: Path, scan: Scan, lost: dict[str, str] | None = None
) -> list[str]:
    """Sorted non-empty class names; GraftError unless there are at least two.

    Args:
        groups: Class name -> its usable images.
        where: The folder of the class folders (or of the images, for a labels file).
        scan: Notes go here; its ``lost`` tells which empty class folders lost files.
        lost: How to name each class that has no usable image -> why, for classes not read from
            folders (a labels file); by default, the empty class folders in ``scan.lost``.

    Raises:
        GraftError: A class whose files were all lost (skipped, unreadable): training without a
            class the user gave must not pass for a success. Also fewer than two classes.
    """
    empty = sorted(c for c, imgs in groups.items() if not imgs)
    if lost is None:
        lost = {f"{scan.rel(where / c)}/": scan.lost[where / c] for c in empty if where / c in scan.lost}
    if lost:
        named = [f"{c}: {why}" for c, why in sorted(lost.items())]
        more = f"; ... ({len(named)} in all)" if len(named) > 3 else ""
        if len(named) == 1:
            raise GraftError(f"no usable training images in {named[0]}; fix or remove its files")
        raise GraftError(
            f"{len(named)} classes have no usable training images: {'; '.join(named[:3])}{more}; "
            "fix or remove their files"
        )
    if not groups:
        hint = " (or pass labels=FILE.csv for a flat folder)" if list_images(where) else ""
        raise GraftError(f"{where} has no class folders: expected one folder of images per class{hint}")
    classes = sorted(c for c, imgs in groups.items() if imgs)
    if empty:
        have = "has" if len(empty) == 1 else "have"
        scan.notes.append(
            f"{plural(len(empty), 'class folder')} {have} no usable images; ignored: {preview(empty, 5)}"
        )
    if not classes:
        raise GraftError(f"no images found in the class folders of {where}")
    if len(classes) == 1:
        raise GraftError(f"only one class ({classes[0]!r}) in {where}: a classifier needs at least two")
    return classes
