"""Callbacks: everything the trainer does around its loop, one job each (fastai's design).

A callback subclasses :class:`Callback` and overrides the hooks it needs; the
:class:`~graft.engine.trainer.Trainer` calls them in ``order`` (lowest first) at fixed points::

    before_fit
    for each phase:        before_phase      (may skip it: trainer.skip_phase())
        for each epoch:    before_epoch
            for each batch:    after_loss    (before the optimizer step; may stop: trainer.stop())
                               after_step    (after the optimizer and scheduler steps)
                           after_validate    (the row has its val scores; add columns here)
                           after_epoch       (the row is in trainer.progress.history)
                           end_epoch         (where training stands is final: save, write logs)
    after_fit

A hook receives the trainer, through which it reads and changes everything: ``model``, ``cfg``,
``phase``, ``optimizer``, ``scheduler``, ``runner`` (the :class:`~graft.engine.passes.Pass`),
``progress`` (a :class:`~graft.engine.checkpoint.Progress`, with the history) and ``log``. To
stop, a callback calls ``trainer.stop(reason)`` (the fit ends after this batch or epoch; a batch
stopped in ``after_loss`` takes no step) or ``trainer.end_phase()`` (the phase ends after this
epoch). Under torch.distributed every rank runs every callback: decide from values every rank
shares (the rows are rank 0's), and write files on rank 0 only.

A callback whose state a resumed run needs returns it from :meth:`Callback.state_dict` (tensors):
it goes into the checkpoint, and on resume :meth:`Callback.load_state_dict` gets it back.

This module ships the callbacks :func:`~graft.engine.trainer.fit` always uses; loggers are in
:mod:`graft.engine.loggers`, the EMA of the weights in :mod:`graft.engine.ema`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from graft.engine.loop import non_finite
from graft.engine.optim import Phase
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.errors import GraftError
from graft.models.weights import load_state

if TYPE_CHECKING:
    from graft.engine.training import Trainer


class Callback:
    """Base class: every hook does nothing. Override those you need.

    Attributes:
        order: When it runs among the others at each hook (lowest first; the shipped ones use
            0 for printing, 10 for best weights, 20 for early stopping, 30 for the EMA, 50 for
            the checkpoint and 60 for loggers, so a default 0 sees each row before they act).
    """

    order: int = 0

    @property
    def name(self) -> str:
        """Its key in a checkpoint (the class name)."""
        return type(self).__name__

    def before_fit(self, trainer: Trainer) -> None:
        """Training is about to start (or go on, when ``trainer.resume`` is a checkpoint)."""

    def before_phase(self, trainer: Trainer) -> None:
        """``trainer.phase`` is about to start or go on; ``trainer.skip_phase()`` skips it."""

    def before_epoch(self, trainer: Trainer) -> None:
        """The epoch's pass, optimizer and scheduler are ready (``trainer.desc`` names it)."""

    def after_loss(self, trainer: Trainer, loss: torch.Tensor) -> None:
        """A batch's loss is computed and its gradients are in, before the optimizer step."""

    def after_step(self, trainer: Trainer) -> None:
        """The optimizer and the scheduler stepped (``trainer.steps`` counts the steps)."""

    def after_validate(self, trainer: Trainer, row: dict) -> None:
        """The epoch's row has its train and val scores; add columns to ``row`` here (every row
        must get the same keys)."""

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        """The row (rank 0's, the same on every rank) is the last of ``trainer.progress.history``."""

    def end_epoch(self, trainer: Trainer) -> None:
        """The epoch is over and ``trainer.progress`` records where training stands."""

    def after_fit(self, trainer: Trainer) -> None:
        """Training is over (also after a stop); the model is about to be returned."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors a resumed run needs to go on exactly (saved with each checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take back what :meth:`state_dict` gave (called in ``before_fit`` order on resume)."""


def better(row: dict, best: dict | None, monitor: str) -> bool:
    """Whether ``row``'s val scores beat ``best``'s (None: anything does) on ``monitor``."""
    if best is None:
        return True
    if monitor == "auto":  # an unresolved config: what auto means for balanced single-label data
        monitor = "val_acc"
    if monitor != "val_loss":
        # Ties in accuracy are common on small val sets: break them with the loss.
        return (row[monitor], -row["val_loss"]) > (best[monitor], -best["val_loss"])
    return row["val_loss"] < best["val_loss"]


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s tensors that later training leaves alone."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


HEADER = (
    f"{'epoch':>5}  {'phase':<8}  {'train_loss':>10}  {'train_acc':>9}  "
    f"{'val_loss':>9}  {'val_acc':>7}  {'lr':>9}  {'seconds':>7}"
)
_TABLE = ("epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def format_row(row: dict) -> str:
    """One line of the epoch table; columns beyond the usual ones follow as ``name value``."""
    val = f"{row['val_loss']:9.4f}  {row['val_acc']:7.4f}" if row["val_loss"] != "" else f"{'-':>9}  {'-':>7}"
    line = (
        f"{row['epoch']:>5}  {row['phase']:<8}  {row['train_loss']:10.4f}  {row['train_acc']:9.4f}  "
        f"{val}  {row['lr']:9.2e}  {row['seconds']:7.1f}"
    )
    extra = [f"{k} {v:.4f}" for k, v in row.items() if k not in _TABLE and isinstance(v, float)]
    return "  ".join([line, *extra])


class ProgressPrinter(Callback):
    """The epoch table through ``trainer.log``: the header before the first epoch (with the rows
    of a resumed run's earlier epochs), then a line per epoch."""

    def __init__(self) -> None:
        self.shown = False

    def before_epoch(self, trainer: Trainer) -> None:
        if not self.shown:
            self.shown = True
            trainer.log(HEADER)
            for row in trainer.progress.history:  # a resumed run shows its whole table
                trainer.log(format_row(row))

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        trainer.log(format_row(row))


class BestWeights(Callback):
    """Keep a copy of the weights of the best epoch so far (on ``monitor``; an epoch without val
    scores always counts as best, so without a val split the last epoch is kept) and put them
    back in the model at the end. Sets ``trainer.progress.best_epoch``.

    Attributes:
        state: The best weights so far (None before the first epoch).
    """

    order = 10

    def __init__(self, monitor: str = "val_acc") -> None:
        self.monitor = monitor
        self.state: dict[str, torch.Tensor] | None = None
        self.best: dict | None = None

    def before_fit(self, trainer: Trainer) -> None:
        p = trainer.progress
        self.best = p.history[p.best_epoch - 1] if p.best_epoch else None
        if trainer.resume is not None:
            self.state = trainer.resume.best or clone_state(trainer.model)

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        if row["val_loss"] == "" or better(row, self.best, self.monitor):
            self.best, trainer.progress.best_epoch = row, row["epoch"]
            self.state = clone_state(trainer.model)

    def after_fit(self, trainer: Trainer) -> None:
        if self.state is None:
            return
        load_state(trainer.model, self.state)
        p = trainer.progress
        if p.best_epoch != p.epoch:
            trainer.log(f"restored the best weights, from epoch {p.best_epoch} ({self.monitor})")


class EarlyStopping(Callback):
    """End a phase after ``patience`` epochs in a row without a new best epoch (None: never).

    Reads ``trainer.progress.best_epoch`` (:class:`BestWeights` sets it, so this runs after it);
    counts in ``trainer.progress.stale``, which starts again at 0 with each phase.
    """

    order = 20

    def __init__(self, patience: int | None, monitor: str = "val_acc") -> None:
        self.patience, self.monitor = patience, monitor

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        p = trainer.progress
        if p.best_epoch == row["epoch"]:
            p.stale = 0
            return
        p.stale += 1
        if self.patience is not None and p.stale >= self.patience:
            trainer.log(
                f"early stopping: {p.stale} epochs without {self.monitor} improvement ({trainer.phase.name})"
            )
            p.stopped = "early stopping"
            trainer.end_phase()


class NaNStop(Callback):
    """Stop training at a NaN or infinite loss, before it reaches the weights: the best weights so
    far are kept, and why is logged and recorded (``trainer.progress.stopped``). With no epoch
    finished yet there are no weights worth keeping, and it raises.

    Raises:
        GraftError: At a NaN or infinite loss in the first epoch.
    """

    def after_loss(self, trainer: Trainer, loss: torch.Tensor) -> None:
        message = non_finite(loss, trainer.desc)
        if message is None:
            return
        if trainer.progress.best_epoch is None:
            raise GraftError(message)
        trainer.stop(message)


def skip_unfreeze(phase: Phase, cfg: TrainConfig, best: dict | None) -> str | None:
    """Why the unfrozen phase is not worth running, or None to run it."""
    # The score the kept epoch is chosen by (balanced accuracy, mAP...), else accuracy.
    score = cfg.monitor if cfg.monitor not in ("val_loss", "auto") else "val_acc"
    if phase.name != "unfrozen" or cfg.unfreeze_below is None or best is None or best[score] == "":
        return None
    # val_acc is a float32 mean: 38/40 comes out as 0.94999999, which must count as 0.95.
    if best[score] < cfg.unfreeze_below - 1e-6:
        return None
    what = "val accuracy" if score == "val_acc" else score
    return (
        f"skipped the unfrozen epochs: the frozen head reached {what} {best[score]:.4f} "
        f">= {cfg.unfreeze_below} (--unfreeze-below); pass --epochs N to fine-tune anyway"
    )


def blind_unfreeze(phase: Phase, cfg: TrainConfig, has_val: bool) -> str | None:
    """What to say when the unfrozen phase runs only because there is no val split to judge by."""
    if phase.name != "unfrozen" or cfg.unfreeze_below is None or has_val:
        return None
    return (
        "no val split to judge the frozen head by (--unfreeze-below): the unfrozen epochs run and the "
        "last epoch is kept; --epochs 0 keeps the frozen head"
    )


class UnfreezeGate(Callback):
    """``--unfreeze-below``: skip the unfrozen phase when the frozen head is already good enough
    (recorded in ``trainer.progress.unfreeze_skipped``), and say so when there is no val split
    to judge it by."""

    def before_phase(self, trainer: Trainer) -> None:
        p = trainer.progress
        if p.phase_epochs:
            return  # a phase that goes on (resumed) was judged when it began
        best = p.history[p.best_epoch - 1] if p.best_epoch else None
        skip = skip_unfreeze(trainer.phase, trainer.cfg, best)
        if skip:
            trainer.log(skip)
            p.unfreeze_skipped = skip
            trainer.skip_phase()
            return
        note = blind_unfreeze(trainer.phase, trainer.cfg, bool(trainer.data.splits.get("val")))
        if note:
            trainer.log(note)
