"""Files: atomic writes (a crash mid-write never leaves a half-written file behind), hashing,
reading CSV text, and the one-line error for a failed write."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from graft.infrastructure.errors import GraftError

# What atomic_write (and every writer like it) names its temporary file: ".NAME." + mkstemp's
# 8 random characters + ".tmp". A kill -9 mid-write leaves one behind; nothing else is named so.
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is that of a temporary file left by an interrupted atomic write."""
    return _TEMP_NAME.fullmatch(name) is not None


def temp_file(path: Path) -> Path:
    """A new empty temporary file beside ``path``, named as :func:`is_temp_file` recognises."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def remove_temp_files(folder: str | Path) -> int:
    """Delete the temporary files that killed writers left in ``folder``; returns how many.

    Raises:
        OSError: If one cannot be deleted.
    """
    removed = 0
    for entry in Path(folder).iterdir():
        if is_temp_file(entry.name) and (entry.is_file() or entry.is_symlink()):
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def default_mode(base: int) -> int:
    """The mode ``open()`` (base 0o666) or ``mkdir()`` (0o777) gives a new file or folder: ``base``
    less the umask. ``tempfile`` makes private ones (0600/0700); this is what to chmod them to."""
    umask = os.umask(0)  # there is no getter: set and put back
    os.umask(umask)
    return base & ~umask


def atomic_write(
    path: str | Path, write: Callable[[Path], None], before_replace: Callable[[], None] | None = None
) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The rename is atomic on POSIX and Windows, so readers see the old file or the new one,
    never a partial one. The temporary file is deleted whatever goes wrong; only a kill -9 can
    leave it behind (:func:`remove_temp_files` finds it by its name).

    Args:
        path: The file to write.
        write: Writes the whole content to the path it is given.
        before_replace: Called once the content is safely on disk, just before the rename (e.g. to
            retract a file that vouches for the old content); not called if the write fails.

    Raises:
        OSError: If the file cannot be written (e.g. a full disk); the old file is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path)
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
        if before_replace is not None:
            before_replace()
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


def read_csv_rows(path: Path, what: str, *, empty_hint: str = "") -> list[list[str]]:
    """The non-blank rows of a CSV file, header first, read with the ``csv`` module.

    Args:
        path: The file.
        what: How errors name it, e.g. ``"labels file"``.
        empty_hint: Appended to the error for a file with no rows.

    Raises:
        GraftError: A missing, unreadable, non-UTF-8, malformed or empty file, or a folder.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: Excel writes a BOM before the header
    except FileNotFoundError:
        raise GraftError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise GraftError(f"{what} {path} is a folder, not a CSV file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GraftError(f"cannot read {what} {path}: {e}") from None
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    except csv.Error as e:
        raise GraftError(f"{what} {path} is not valid CSV: {e}") from None
    if not rows:
        raise GraftError(f"{what} {path} is empty{empty_hint}")
    return rows


def inside(path: Path, root: Path) -> bool:
    """True if ``path`` is ``root`` or below it (lexically, so records stay relative)."""
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(root)


def cannot_write(path: str | Path, error: OSError, saved: str = "") -> GraftError:
    """The one-line error for an OSError met writing ``path`` (a read-only file system, a full
    disk, a file where a folder should be): what the system said, the path it named when that is
    another one, and ``saved``, a note on what was kept."""
    reason = error.strerror or str(error) or type(error).__name__
    blocker = next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)
    if isinstance(error, FileExistsError | NotADirectoryError) and blocker is not None:
        reason = f"{blocker} is a file, not a folder"
    elif error.filename and str(error.filename) != str(path):
        reason += f" ({error.filename})"
    return GraftError(f"cannot write {path}: {reason}" + (f"; {saved}" if saved else ""))
