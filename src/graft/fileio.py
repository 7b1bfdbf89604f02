"""Atomic writes and hashing: a crash mid-write never leaves a half-written file behind."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def default_mode(base: int) -> int:
    """The mode ``open()`` (base 0o666) or ``mkdir()`` (0o777) gives a new file or folder: ``base``
    less the umask. ``tempfile`` makes private ones (0600/0700); this is what to chmod them to."""
    umask = os.umask(0)  # there is no getter: set and put back
    os.umask(umask)
    return base & ~umask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The rename is atomic on POSIX and Windows, so readers see the old file or the new one,
    never a partial one.

    Raises:
        OSError: If the file cannot be written (e.g. a full disk); the old file is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            write(tmp)
        except Exception as e:
            # safetensors reports a full disk with its own error type: make it the OSError it is.
            if type(e).__name__ == "SafetensorError":
                raise OSError(str(e)) from e
            raise
        # mkstemp makes the file private (0600); give it the mode open() would have.
        # After the write: safetensors replaces the file, so a mode set before would be lost.
        os.chmod(tmp, default_mode(0o666))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
