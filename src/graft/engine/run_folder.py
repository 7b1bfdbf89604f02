"""Replacing a run folder (``graft train --overwrite``) as safely as writing a fresh one.

The old run stays where it is, whole and usable, while the new run starts; the moment the new
run's first checkpoint lands (an atomic rename over any old checkpoint), everything else in the
folder is deleted, ``graft.json`` first. So at every instant of a kill:

- ``graft.json`` present: it vouches for the ``model.safetensors`` beside it (old run or new);
- ``checkpoint.safetensors`` present: ``graft train --resume RUN`` goes on with the newest run,
  and deletes whatever else is in the folder (the old run's files, half a final save,
  temporary files) before it trains.

Only the process that writes checkpoints (rank 0 under torchrun) acts on this; which folders are
being replaced is known to this process alone (a kill forgets it, and the rules above still hold).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import remove_temp_files

# A finished run's record; while it is present it vouches for the weights beside it.
META_FILE = "graft.json"

_replacing: set[Path] = set()


@contextmanager
def replacing(run_dir: str | Path, active: bool = True) -> Iterator[None]:
    """While in the block, ``run_dir``'s old run is to be replaced by the one being trained.

    Its old checkpoint (if any) is not resumed, and the first checkpoint written there clears
    the old run (:func:`checkpoint_written`). Nothing is deleted on entry.

    Args:
        run_dir: The run folder.
        active: False makes this a no-op (a run that replaces nothing).
    """
    key = Path(run_dir).resolve()
    if active:
        _replacing.add(key)
    try:
        yield
    finally:
        _replacing.discard(key)


def is_replacing(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` still holds an old run that the run in progress replaces."""
    return Path(run_dir).resolve() in _replacing


def checkpoint_written(run_dir: str | Path, checkpoint_name: str) -> None:
    """Called once a checkpoint is safely in ``run_dir``: the old run, if one is being replaced,
    goes now (the new run is resumable from here on).

    Never raises: if the old files cannot be deleted, a warning says so and :func:`settle` tries
    again before the final save (an error then, outside the epochs, where every rank has stopped).
    """
    if not is_replacing(run_dir):
        return
    try:
        clear(run_dir, keep=(checkpoint_name,))
    except GraftError as e:
        warnings.warn(f"{e}; tried again before the run is saved", stacklevel=3)
        return
    _replacing.discard(Path(run_dir).resolve())


def settle(run_dir: str | Path) -> None:
    """Before the final save: if no checkpoint of the new run ever landed (every write failed),
    the old run, its checkpoint included, goes now, so none of it survives beside the new one."""
    if is_replacing(run_dir):
        clear(run_dir, keep=())
        _replacing.discard(Path(run_dir).resolve())


def clear(run_dir: str | Path, keep: tuple[str, ...]) -> None:
    """Delete everything in ``run_dir`` but the entries named in ``keep``.

    ``graft.json`` goes first: from then on the folder no longer claims to hold a finished run,
    whatever a kill leaves of the rest.

    Raises:
        GraftError: If something cannot be deleted.
    """
    run_dir = Path(run_dir)
    try:
        if META_FILE not in keep:
            (run_dir / META_FILE).unlink(missing_ok=True)
        for entry in sorted(run_dir.iterdir()):
            if entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
    except OSError as e:
        raise GraftError(f"cannot clear the old run from {run_dir}: {e.strerror or e}") from None


def tidy(run_dir: str | Path) -> None:
    """Delete temporary files that a killed earlier attempt left in ``run_dir`` (if it exists)."""
    if Path(run_dir).is_dir():
        try:
            remove_temp_files(run_dir)
        except OSError as e:
            raise GraftError(f"cannot tidy {run_dir}: {e.strerror or e}") from None
