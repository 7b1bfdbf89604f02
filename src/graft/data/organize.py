"""``graft organize``: a Kaggle-style dataset (a flat folder + a labels CSV, or class folders)
written out as ImageFolder trees, the way d2l.ai's Kaggle chapters reorganise theirs.

``OUT/train/<class>/``, ``OUT/valid/<class>/``, ``OUT/train_valid/<class>/`` (train and valid
together, for the final retrain) and ``OUT/test/`` (the unlabeled test images, flat). The split is
graft's own (:meth:`graft.ImageData.from_folder`): seeded, stratified, and a class too small for a
valid image keeps all of its images in train. Files keep their names and are linked, not copied,
when the file system allows it. The tree is built in a hidden sibling folder and renamed into place
at the end, so ``OUT`` is never half-written. ``OUT/organize.json`` records what was done.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from graft.data._placing import HOW, Placer, swap_into_place
from graft.data._scan import Scan, skipped_line
from graft.data.dataset import ImageData, Sample
from graft.data.images import list_images
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import default_mode, inside
from graft.infrastructure.text import plural

LINK_MODES = ("auto", "hardlink", "symlink", "copy")
RECORD_FILE = "organize.json"
_MAX_NAME_BYTES = 255  # one path component on ext4, APFS, NTFS


@dataclass
class OrganizeResult:
    """What :func:`organize` wrote.

    Attributes:
        out: The folder written.
        layout: The source's layout, as :attr:`graft.ImageData.layout` (``csv``, ``split``, ``folders``).
        classes: Class names (one folder each under train/ and train_valid/).
        counts: Images per folder written: ``train``, ``valid`` (absent when empty), ``train_valid``
            and ``test`` (absent without test images).
        class_counts: Classes with at least one image, per folder (0 for an unlabeled test/).
        placed: How the files were placed: ``hardlink``/``symlink``/``copy`` -> files.
        skipped: (path, reason) for each file left out as unreadable (each also warned about).
        notes: Remarks, as ``ImageData.notes`` (small classes kept in train, fallbacks, ...).
        seconds: Wall time.
    """

    out: Path
    layout: str
    classes: list[str]
    counts: dict[str, int]
    class_counts: dict[str, int]
    placed: dict[str, int]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """A few lines: images and classes per folder, how the files were placed, what was skipped."""
        width = max(len(k) for k in self.counts)
        digits = max(len(f"{n:,}") for n in self.counts.values())
        lines = [f"{plural(len(self.classes), 'class', 'classes')} from a {self.layout!r} dataset"]
        for name, n in self.counts.items():
            k = self.class_counts.get(name, 0)
            what = plural(k, "class", "classes") if k else "unlabeled"
            images = "image " if n == 1 else "images"
            lines.append(f"  {name.ljust(width)}  {n:>{digits},} {images}  {what}")
        placed = ", ".join(f"{n:,} as {HOW[how]}" for how, n in self.placed.items() if n) or "none"
        lines.append(f"placed {plural(sum(self.placed.values()), 'file')}: {placed}")
        lines.append(skipped_line(self.skipped))
        return "\n".join(lines)


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class folder's name, or None when it can.

    Class folders hold a class's images, and graft's scanner reads their names back as the classes,
    so a name must survive as one folder name unchanged: not empty, not ``.`` or ``..``, not
    hidden (a leading ``.``: the scanner skips hidden folders), no ``/`` or ``\\`` (a path
    separator on POSIX or Windows), no control characters, at most 255 bytes in UTF-8.
    """
    if not name or not name.strip():
        return "it is empty"
    if name in (".", ".."):
        return f"{name!r} is not a folder name"
    if name.startswith("."):
        return "a leading '.' makes a hidden folder, which graft does not read"
    for bad in ("/", "\\"):
        if bad in name:
            return f"it contains {bad!r}, a path separator"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "it contains a control character"
    if len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
        return f"it is longer than {_MAX_NAME_BYTES} bytes"
    return None


def organize(
    data: str | Path,
    out: str | Path,
    *,
    labels: str | Path | None = None,
    valid_split: float = 0.1,
    test: str | Path | None = None,
    seed: int = 0,
    link: str = "auto",
    overwrite: bool = False,
) -> OrganizeResult:
    """Write ``data`` as ImageFolder trees under ``out``: train/, valid/, train_valid/ and test/.

    Args:
        data: The dataset folder: a flat image folder (or a folder holding one, e.g. Kaggle's
            ``train/``) with ``labels``, or class folders; any layout :meth:`ImageData.from_folder`
            reads.
        out: The folder to write. It must not exist, be empty, or (``overwrite``) hold an earlier
            ``organize`` output (one with ``organize.json``); it is replaced only at the very end.
        labels: A labels CSV (``id,label``) for a flat folder.
        valid_split: Fraction of the labeled images for valid/ (graft's stratified split; a class
            too small for a valid image stays whole in train/). 0 writes no valid/.
        test: A folder of unlabeled test images, written flat to ``out/test/``. Default: the
            ``test/`` folder that ``ImageData`` finds beside a CSV layout's images (as Kaggle
            ships them), else the images folder's name with ``train`` replaced by ``test``
            (``train_tiny/`` -> ``test_tiny/``), else none.
        seed: Split seed: the same seed gives the same split as ``graft train DATA
            --valid-split F --seed S``.
        link: ``auto`` (a hard link, else a symbolic link, else a copy), ``hardlink``, ``symlink``
            or ``copy``. Hard links share the file with the source: edit neither in place.
        overwrite: Replace an existing ``out`` written by ``organize``.

    Raises:
        GraftError: Bad arguments, unusable data (as :meth:`ImageData.from_folder`), a class name
            that cannot be a folder name, an ``out`` that would overlap the data, or a failed write.
    """
    start = time.perf_counter()
    if link not in LINK_MODES:
        raise GraftError(f"link must be one of {', '.join(LINK_MODES)}, got {link!r}")
    out = Path(os.path.abspath(Path(out).expanduser()))
    test_dir = None
    if test is not None:
        test_dir = Path(os.path.abspath(Path(test).expanduser()))
        if not test_dir.is_dir():
            raise GraftError(f"test folder {test_dir} does not exist")
    _check_not_inside(out, Path(os.path.abspath(Path(data).expanduser())), test_dir)
    _check_out(out, overwrite)
    images = ImageData.from_folder(data, labels=labels, valid_split=valid_split, seed=seed)
    if images.multi_label:
        raise GraftError(
            "graft organize makes one folder per class, and a multi-label image belongs to several: "
            "train on the labels CSV directly (graft train DATA --labels CSV)"
        )
    notes, skipped = list(images.notes), list(images.skipped)
    for c in images.classes:
        why = class_name_problem(c)
        if why is not None:
            where = f"in {Path(labels).name}" if labels is not None else "among the class folders"
            raise GraftError(f"class {c!r} {where} cannot be a folder name: {why}; rename it")

    train, valid = images.splits["train"], images.splits["val"]
    test_samples, test_dir, found_test = _test_images(images, test_dir, notes, skipped)
    _check_no_overlap(out, images, test_dir)

    labeled_test = bool(test_samples) and all(s.label is not None for s in test_samples)
    folders = {"train": [train], "valid": [valid], "train_valid": [train, valid]}
    if not valid:
        del folders["valid"]
        why = "valid_split is 0" if valid_split == 0 else "no class has enough images for one"
        notes.append(f"no valid/ folder: {why}")
    if test_samples:
        folders["test"] = [test_samples]
    names = _file_names(images.classes, [train, valid], notes)
    if labeled_test:
        names |= _file_names(images.classes, [test_samples], notes)
    test_source = test_dir or found_test
    how = (labels, test_source, valid_split, seed, link)
    result = _write_tree(out, images, folders, names, how, (notes, skipped))
    result.seconds = time.perf_counter() - start
    return result


def _test_images(
    images: ImageData, test_dir: Path | None, notes: list[str], skipped: list
) -> tuple[list[Sample], Path | None, Path | None]:
    """``(test samples, the test folder asked for or guessed, the unlabeled test folder the scan
    found)``; notes and skips of a separate test folder go into ``notes`` and ``skipped``."""
    test_samples = images.splits.get("test", [])
    found_test = test_samples[0].path.parent if test_samples and test_samples[0].label is None else None
    if test_dir is None and not test_samples and images.layout == "csv":
        test_dir = _guess_test_folder(images.splits["train"][0].path.parent)
    if test_dir is not None and test_dir != found_test:
        if test_samples:
            notes.append(f"test images from {test_dir}, not from the test split graft found in the data")
        scan = Scan(test_dir)
        test_samples = [Sample(p, None) for p in scan.good(list_images(test_dir))]
        skipped += scan.skipped
        if not test_samples:
            raise GraftError(f"test folder {test_dir} has no images")
    return test_samples, test_dir, found_test


def _write_tree(
    out: Path,
    images: ImageData,
    folders: dict[str, list[list[Sample]]],
    names: dict[Path, str],
    how: tuple,
    remarks: tuple[list[str], list],
) -> OrganizeResult:
    """Build the tree in a hidden sibling of ``out`` and rename it into place; ``how`` is
    ``(labels, test source, valid_split, seed, link)`` for the record, ``remarks`` the notes and
    skipped files so far."""
    labels, test_source, valid_split, seed, link = how
    notes, skipped = remarks
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.organize-", dir=out.parent))
        tmp.chmod(default_mode(0o777))  # mkdtemp's folder is private (0700); OUT gets mkdir's usual mode
    except OSError as e:
        raise GraftError(f"cannot write to {out.parent}: {e.strerror or e}") from None
    placer = Placer(link, tmp, out)
    try:
        counts: dict[str, int] = {}
        class_counts: dict[str, int] = {}
        for name, parts in folders.items():
            samples = [s for part in parts for s in part]
            for s in samples:
                if s.label is None:  # an unlabeled test image: flat, under its own name
                    placer.place(s.path, tmp / name / s.path.name)
                else:
                    placer.place(s.path, tmp / name / images.classes[s.label] / names[s.path])
            counts[name] = len(samples)
            class_counts[name] = len({s.label for s in samples} - {None})
        result = OrganizeResult(
            out=out,
            layout=images.layout,
            classes=list(images.classes),
            counts=counts,
            class_counts=class_counts,
            placed=dict(placer.counts),
            skipped=skipped,
            notes=notes + placer.notes,
        )
        record = _record(result, images, labels, test_source, valid_split, seed, link, folders)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        swap_into_place(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GraftError(f"cannot write {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder (unless ``overwrite`` and it is ours)."""
    if out.is_symlink():  # replacing it would replace the link, not what it points to
        raise GraftError(f"{out} is a symbolic link: give the folder it points to, or another --out")
    if out.exists() and not out.is_dir():
        raise GraftError(f"{out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise GraftError(f"{out} exists and is not empty; pass --overwrite or choose another --out")
    if not (out / RECORD_FILE).is_file():
        # --overwrite deletes the folder: only ever one this function wrote.
        raise GraftError(
            f"{out} is not a folder graft organize wrote (it has no {RECORD_FILE}); "
            "--overwrite replaces only those: remove it yourself or choose another --out"
        )


def _check_not_inside(out: Path, *sources: Path | None) -> None:
    """``out`` must not hold the source: it would be replaced."""
    for source in sources:
        if source is not None and inside(os.path.realpath(source), os.path.realpath(out)):
            raise GraftError(f"--out {out} would replace the data in {source}: choose a folder outside it")


def _check_no_overlap(out: Path, images: ImageData, test_dir: Path | None) -> None:
    """``out`` must not hold the source (it would be replaced) nor lie where the source is read."""
    _check_not_inside(out, images.root, test_dir)
    if images.layout != "csv" and inside(os.path.realpath(out), os.path.realpath(images.root)):
        # Inside a folder of class folders, OUT would be read as one more class next time.
        raise GraftError(
            f"--out {out} is inside the dataset folder {images.root}, where graft would read it as "
            "data next time: choose a folder outside it"
        )


def _guess_test_folder(image_folder: Path) -> Path | None:
    """``train_tiny/`` -> a sibling ``test_tiny/`` with images, as CIFAR-10's Kaggle files are named."""
    name = image_folder.name
    if "train" not in name.lower():
        return None
    i = name.lower().index("train")
    sibling = image_folder.parent / (name[:i] + ("TEST" if name[i].isupper() else "test") + name[i + 5 :])
    return sibling if sibling.is_dir() and sibling != image_folder and list_images(sibling) else None


def _file_names(classes: list[str], parts: list[list[Sample]], notes: list[str]) -> dict[Path, str]:
    """Each file's name in its class folder: its own name, unless another file of that class
    already took it (class folders listed recursively): then ``stem-2.ext``, ``stem-3.ext``, ..."""
    taken: dict[str, set[str]] = {c: set() for c in classes}
    names: dict[Path, str] = {}
    renamed: list[tuple[Path, str]] = []
    for s in sorted((s for part in parts for s in part), key=lambda s: s.path):
        used = taken[classes[s.label]]
        name, k = s.path.name, 1
        while name.lower() in used:  # lower(): case-insensitive file systems would merge them
            k += 1
            name = f"{s.path.stem}-{k}{s.path.suffix}"
        used.add(name.lower())
        names[s.path] = name
        if name != s.path.name:
            renamed.append((s.path, name))
    if renamed:
        path, name = renamed[0]
        notes.append(
            f"{plural(len(renamed), 'file')} renamed where another file of its class had the same name "
            f"(e.g. {path} -> {name})"
        )
    return names


def _record(
    result: OrganizeResult,
    images: ImageData,
    labels: str | Path | None,
    test_dir: Path | None,
    valid_split: float,
    seed: int,
    link: str,
    folders: dict[str, list[list[Sample]]],
) -> dict:
    """``organize.json``: where the data came from, how it was split and placed, the counts."""
    from graft.infrastructure.version import __version__

    tally = {name: Counter(s.label for part in parts for s in part) for name, parts in folders.items()}
    per_class = {
        c: {name: tally[name][i] for name in tally if tally[name][i]} for i, c in enumerate(images.classes)
    }
    if labels is not None:  # found as ImageData found it: a relative path may also sit inside the data
        labels = Path(labels).expanduser()
        if not labels.is_absolute() and not labels.exists() and (images.root / labels).exists():
            labels = images.root / labels
    return {
        "graft_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {
            "data": str(images.root),
            "layout": images.layout,
            "labels": None if labels is None else os.path.abspath(labels),
            "test": None if test_dir is None else str(test_dir),
        },
        "seed": seed,
        "valid_split": valid_split,
        "link": {"requested": link, "placed": result.placed},
        "counts": result.counts,
        "classes": per_class,
        "skipped": [[str(p), reason] for p, reason in result.skipped],
        "notes": result.notes,
    }


__all__ = ["LINK_MODES", "RECORD_FILE", "OrganizeResult", "class_name_problem", "organize"]
