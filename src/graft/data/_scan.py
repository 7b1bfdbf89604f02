"""Scanning helpers shared by the dataset layouts: class folders, skipped files, notes."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from graft.data.images import check_image, list_images
from graft.errors import GraftError

VAL_NAMES = ("val", "valid", "validation")


class Scan:
    """Collects skipped files and notes while a dataset is being read."""

    def __init__(self) -> None:
        self.skipped: list[tuple[Path, str]] = []
        self.notes: list[str] = []

    def good(self, paths: Iterable[Path]) -> list[Path]:
        """The paths that pass check_image; the others are recorded and warned about (once each)."""
        ok = []
        for p in paths:
            reason = check_image(p)
            if reason is None:
                ok.append(p)
            else:
                self.skipped.append((p, reason))
                warnings.warn(f"skipping {p}: {reason}", UserWarning, stacklevel=2)
        return ok

    def class_folders(self, folder: Path) -> dict[str, list[Path]]:
        """Class name -> good images (recursive) for each non-hidden subfolder of ``folder``."""
        return {d.name: self.good(list_images(d, recursive=True)) for d in subdirs(folder)}


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
        scan.notes.append(
            f"{len(empty)} class folders have no usable images; ignored: {', '.join(empty[:5])}"
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
