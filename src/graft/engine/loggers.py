"""Loggers: the history as CSV (``history.csv``) and as TensorBoard scalars, after every epoch.

Both write on rank 0 only, and take an optional ``when`` gate: :func:`~graft.engine.trainer.fit`
lets them write into a run folder only once a checkpoint is there, so a folder never holds a
log without the run it belongs to (a full disk leaves it empty).
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.engine.callbacks import Callback
from graft.infrastructure.distributed import world
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import atomic_write_text

if TYPE_CHECKING:
    from graft.engine.training import Trainer


def history_csv(rows: list[dict]) -> str:
    """The text of ``history.csv``: a header from the first row's keys, then a line per row."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class _Gated(Callback):
    """Writes on rank 0 only, and only while ``when()`` says so."""

    order = 60  # after the checkpoint (50): the first one of an --overwrite clears the old run

    def __init__(self, when: Callable[[], bool] | None) -> None:
        self.when = when

    def writes(self) -> bool:
        return world().is_main and (self.when is None or self.when())


class CSVLogger(_Gated):
    """Write the whole history to ``path`` (CSV, atomically) after every epoch.

    Args:
        path: The file, e.g. ``RUN/history.csv``.
        when: Write only while this returns True (default: always).
    """

    def __init__(self, path: str | Path, when: Callable[[], bool] | None = None) -> None:
        super().__init__(when)
        self.path = Path(path)
        self.warned = False

    def end_epoch(self, trainer: Trainer) -> None:
        if not self.writes() or not trainer.progress.history:
            return
        try:
            atomic_write_text(self.path, history_csv(trainer.progress.history))
        except OSError as e:
            if not self.warned:  # a full disk: training goes on (the checkpoint says the same)
                self.warned = True
                warnings.warn(f"could not write {self.path} ({e.strerror or e})", stacklevel=2)


def _tag(key: str) -> str:
    """``train_loss`` -> ``train/loss``, ``ema_val_acc`` -> ``ema_val/acc``, ``lr`` -> ``lr``."""
    for prefix in ("ema_val_", "train_", "val_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix) :]}"
    return key


class TensorBoardLogger(_Gated):
    """Every numeric column of each epoch's row as a TensorBoard scalar at step ``epoch``:
    ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/<metric>``, ``lr``,
    ``seconds`` (and ``ema_val/...`` with the EMA).

    A resumed run writes its earlier epochs again and tells TensorBoard to drop any events it
    had already logged from there on (``purge_step``), so each epoch shows once.

    Args:
        log_dir: The folder of the event files, e.g. ``RUN/tensorboard``.
        when: Write only while this returns True (default: always).

    Raises:
        GraftError: If the tensorboard package is missing (when training starts).
    """

    def __init__(self, log_dir: str | Path, when: Callable[[], bool] | None = None) -> None:
        super().__init__(when)
        self.log_dir = Path(log_dir)
        self.writer: Any = None
        self.written = 0  # rows of the history already logged

    def before_fit(self, trainer: Trainer) -> None:
        summary_writer()  # a missing package fails now, not after the first epoch

    def end_epoch(self, trainer: Trainer) -> None:
        rows = trainer.progress.history
        if not self.writes() or self.written >= len(rows):
            return
        if self.writer is None:  # opened late: the first checkpoint may clear the folder first
            self.writer = summary_writer()(str(self.log_dir), purge_step=rows[self.written]["epoch"])
        for row in rows[self.written :]:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(_tag(key), value, row["epoch"])
        self.written = len(rows)
        self.writer.flush()  # a killed run keeps what it logged

    def after_fit(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def summary_writer() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, imported only when asked for.

    Raises:
        GraftError: If the tensorboard package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise GraftError(
            "--log tensorboard needs the tensorboard package: pip install 'graft[tensorboard]'"
        ) from None
    return SummaryWriter
