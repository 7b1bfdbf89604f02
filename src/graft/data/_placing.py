"""Placing files for ``graft organize``: hard links, symbolic links or copies, and the final
rename of the finished tree into place."""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections import Counter
from pathlib import Path

from graft.infrastructure.errors import GraftError

HOW = {"hardlink": "hard links", "symlink": "symbolic links", "copy": "copies"}


class Placer:
    """Puts a source file at a destination as a hard link, a symbolic link or a copy.

    ``auto`` tries a hard link, and when the file system refuses one (another file system, no
    permission, no link support) falls back to a symbolic link, then to a copy, for that file and
    every later one; the notes say why. Any other error (a vanished source, a full disk) is raised.
    """

    def __init__(self, mode: str, tmp: Path, out: Path) -> None:
        self.mode = mode
        self.tmp, self.out = tmp, out  # errors name the file's final place, not the temporary one
        self.order = ["hardlink", "symlink", "copy"] if mode == "auto" else [mode]
        self.counts: Counter[str] = Counter()
        self.notes: list[str] = []
        self.made: set[Path] = set()

    def place(self, src: Path, dest: Path) -> None:
        if dest.parent not in self.made:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.made.add(dest.parent)
        while True:
            how = self.order[0]
            try:
                if how == "hardlink":
                    os.link(src, dest)  # follows a symlinked source (linkat with AT_SYMLINK_FOLLOW)
                elif how == "symlink":
                    if not src.exists():  # a symlink to nothing would be "placed" without complaint
                        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(src))
                    os.symlink(os.path.abspath(src), dest)
                else:
                    shutil.copy2(src, dest)
            except OSError as e:
                if len(self.order) > 1 and e.errno in _UNSUPPORTED:
                    self.order.pop(0)
                    self.notes.append(
                        f"{HOW[how]} are not possible here ({e.strerror or e}): made {HOW[self.order[0]]}"
                    )
                    continue
                hint = "; try --link auto or --link copy" if self.mode in ("hardlink", "symlink") else ""
                final = self.out / dest.relative_to(self.tmp)
                raise GraftError(f"cannot {_VERB[how]} {src} to {final}: {e.strerror or e}{hint}") from None
            self.counts[how] += 1
            return


_VERB = {"hardlink": "hard-link", "symlink": "symlink", "copy": "copy"}
# Errors that say "this file system (or this user) cannot make such links", not "this file is bad".
_UNSUPPORTED = {
    errno.EXDEV,
    errno.EPERM,
    errno.EACCES,
    errno.EMLINK,
    errno.ENOSYS,
    errno.ENOTSUP,
    errno.EOPNOTSUPP,
    errno.EROFS,
}


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` (empty, or an earlier organize
    output) is moved aside first and deleted only once the new one is in place."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{os.getpid()}-{time.time_ns()}"
            os.rename(out, old)
        else:
            out.rmdir()
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
