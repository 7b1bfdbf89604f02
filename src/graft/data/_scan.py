"""Scanning helpers shared by the dataset layouts: class folders, skipped files, notes."""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from graft.data._duplicates import cross_split_duplicates, describe
from graft.data.images import Ignored, check_image, list_images, skip_kind
from graft.errors import DuplicateImageWarning, GraftError, SkippedFileWarning

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
        """Class name -> good images (recursive) for each non-hidden subfolder of ``folder``."""
        groups = {}
        for d in subdirs(folder):
            loops = len(self.ignored.loops)
            groups[d.name] = self.good(list_images(d, recursive=True, ignored=self.ignored))
            for link, target in self.ignored.loops[loops:]:
                warnings.warn(
                    f"skipping {link}: symlink loop (it points to {target}, which contains it); not followed",
                    SkippedFileWarning,
                    stacklevel=2,
                )
        return groups

    def rel(self, path: Path) -> str:
        """``path`` relative to the dataset root when it is inside it, for notes."""
        if self.root is not None and inside(path, self.root):
            return Path(os.path.relpath(path, self.root)).as_posix()
        return str(path)

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
        found = cross_split_duplicates(splits)
        if found:
            text = describe(found, self.root or Path.cwd())
            warnings.warn(text, DuplicateImageWarning, stacklevel=3)
            self.notes.append(text)


def plural(n: int, one: str, many: str | None = None) -> str:
    """``"1 file"``, ``"3 files"`` (``many`` for irregular plurals)."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def skipped_line(skipped: list[tuple[Path, str]]) -> str:
    """The summary's last line: ``skipped: 3 files (2 truncated, 1 empty)``, most common reason first."""
    if not skipped:
        return "skipped: 0 files"
    kinds = Counter(skip_kind(reason) for _, reason in skipped)
    parts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"skipped: {plural(len(skipped), 'file')} ({parts})"


def subdirs(folder: Path) -> list[Path]:
    """Non-hidden subfolders of ``folder`` (symlinks followed), sorted."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir())


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


def classes_from(groups: dict[str, list[Path]], where: Path, scan: Scan) -> list[str]:
    """Sorted non-empty class names; GraftError unless there are at least two."""
    if not groups:
        hint = " (or pass labels=FILE.csv for a flat folder)" if list_images(where) else ""
        raise GraftError(f"{where} has no class folders: expected one folder of images per class{hint}")
    empty = sorted(c for c, imgs in groups.items() if not imgs)
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


def preview(names: list[str], n: int = 20) -> str:
    """The first ``n`` names, comma-separated (error messages must stay one readable line)."""
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def inside(path: Path, root: Path) -> bool:
    """True if ``path`` is ``root`` or below it (lexically, so records stay relative)."""
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(root)
