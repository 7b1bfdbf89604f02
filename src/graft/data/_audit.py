"""What a folder listing would drop without a word, and dataset-wide checks on the classes.

The listing (:func:`graft.data.images.list_images`) leaves out folders it cannot read, symlinks
that lead nowhere and entries beside the class folders; the functions here find them so the scan
can count and name them. The class checks warn about what makes a score misleading: a class with
no held-out images, an extreme class imbalance, two class names that differ only in case.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from graft.data.images import is_image_file

# Largest / smallest class in train at which graft warns. At 20:1 a model that always answers the
# big class already scores >= 95% accuracy on two classes, so accuracy alone stops meaning much.
IMBALANCE_RATIO = 20


@dataclass
class Unlisted:
    """Entries below a folder that the listing cannot use and leaves out.

    Attributes:
        unreadable: (folder, reason) for each folder whose contents cannot be listed.
        loops: (symlink, what it points to) for each symlink that never reaches a file or folder.
        odd: (path, reason) for broken symlinks and special files (FIFOs, sockets, devices).
    """

    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    loops: list[tuple[Path, Path]] = field(default_factory=list)
    odd: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.unreadable) + len(self.loops) + len(self.odd)


def _why(e: OSError) -> str:
    """``Permission denied`` rather than ``[Errno 13] Permission denied: '/x'``."""
    return e.strerror or type(e).__name__


def _sort_entry(path: Path, found: Unlisted) -> bool:
    """True if ``path`` is a folder to descend into; records it in ``found`` if it is unusable."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            found.loops.append((path, path.parent / os.readlink(path)))
        elif os.path.islink(path):
            found.odd.append((path, f"broken symlink to {os.readlink(path)}, which does not exist"))
        else:
            found.odd.append((path, f"cannot be read: {_why(e)}"))
        return False
    if stat.S_ISDIR(st.st_mode):
        return True
    if not stat.S_ISREG(st.st_mode):
        found.odd.append((path, "not a regular file but a FIFO, socket or device"))
    return False


def audit_tree(folder: Path, found: Unlisted) -> None:
    """Record in ``found`` what below ``folder`` the recursive listing leaves out.

    Folders are walked as :func:`~graft.data.images.list_images` walks them (symlinks followed,
    each real folder once, hidden entries skipped), so nothing is reported twice.
    """
    stack, seen = [Path(folder)], set()
    while stack:
        here = stack.pop()
        try:
            st = os.stat(here)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            names = sorted(e.name for e in os.scandir(here) if not e.name.startswith("."))
        except OSError as e:
            found.unreadable.append((here, _why(e)))
            continue
        subs = [here / n for n in names if _sort_entry(here / n, found)]
        stack.extend(reversed(subs))  # popped in name order, as os.walk visits them


def audit_entries(folder: Path, found: Unlisted) -> None:
    """Record in ``found`` the unusable entries directly in ``folder`` (not below it).

    Symlink loops go to ``found.odd`` here: the notes' "symlink loops in the class folders" is
    about class folders, and a flat folder has none.
    """
    try:
        names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))
    except OSError as e:
        found.unreadable.append((folder, _why(e)))
        return
    here = Unlisted()
    for n in names:
        _sort_entry(folder / n, here)
    found.odd += [
        (link, f"symlink loop (it points to {to}, which never leads to a file)") for link, to in here.loops
    ]
    found.odd += here.odd


def loose_entries(folder: Path) -> list[str]:
    """Names of the non-hidden entries directly in ``folder`` that are not folders, sorted."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    return sorted(e.name for e in entries if not e.name.startswith(".") and not os.path.isdir(e.path))


def loose_note(folder: Path, names: list[str], label: str) -> str | None:
    """``2 files directly in train/, outside the class folders, ignored: cats, x.png`` (None if none)."""
    if not names:
        return None
    images = sum(is_image_file(folder / n) for n in names)
    what = f"{len(names):,} {'file' if len(names) == 1 else 'files'}"
    if images:
        what += f" ({images:,} {'image' if images == 1 else 'images'})"
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
    return f"{what} directly in {label}, outside the class folders, ignored: {shown}"


def case_clashes(names: Iterable[str]) -> list[list[str]]:
    """Groups of names that are equal but for case (``["Cat", "cat"]``), each group sorted."""
    by_fold: dict[str, list[str]] = {}
    for n in sorted(names):
        by_fold.setdefault(n.casefold(), []).append(n)
    return [group for group in by_fold.values() if len(group) > 1]


def case_note(names: Iterable[str]) -> str | None:
    """The warning for class names that differ only in case, or None."""
    clashes = case_clashes(names)
    if not clashes:
        return None
    shown = "; ".join(" and ".join(repr(n) for n in group) for group in clashes[:3])
    more = f" ({len(clashes)} groups in all)" if len(clashes) > 3 else ""
    return f"class names that differ only in case are separate classes: {shown}{more}; rename to merge them"


def imbalance_note(counts: dict[str, int]) -> str | None:
    """The warning when the largest class in train has IMBALANCE_RATIO times the smallest, or None."""
    sized = {c: n for c, n in counts.items() if n > 0}
    if len(sized) < 2:
        return None
    big, small = max(sized, key=lambda c: (sized[c], c)), min(sized, key=lambda c: (sized[c], c))
    ratio = sized[big] / sized[small]
    if ratio < IMBALANCE_RATIO:
        return None
    return (
        f"classes are imbalanced: {big!r} has {sized[big]:,} training images, {small!r} {sized[small]:,} "
        f"({ratio:,.0f}:1); accuracy can look high while small classes are missed: check per-class recall"
    )


def coverage_note(
    split: str, missing: list[str], classes: list[str], why: Callable[[str], str]
) -> str | None:
    """The warning for classes with no images in a held-out split, with the reason per class."""
    if not missing:
        return None
    reasons = "; ".join(f"{c}: {why(c)}" for c in missing[:3])
    if len(missing) == 1:
        return (
            f"class {missing[0]!r} has no images in {split}: {split} scores leave it out ({why(missing[0])})"
        )
    return (
        f"{len(missing)} of {len(classes)} classes have no images in {split}: {split} scores leave them out "
        f"(e.g. {reasons})"
    )


def kinds(counts: Counter[str]) -> str:
    """``2 truncated, 1 empty``: most common first."""
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def warn(text: str, notes: list[str], category: type[Warning] = UserWarning) -> None:
    """Warn ``text`` and keep it as a note (the CLI prints both; library users may filter either)."""
    warnings.warn(text, category, stacklevel=3)
    notes.append(text)
