"""The training driver: :func:`fit` runs the :class:`~graft.engine.training.Trainer` with the
callbacks that ``graft train`` uses: the table, best weights, early stopping, the NaN stop, the
unfreeze gate, checkpoints and resume (:class:`Checkpointer`), ``history.csv``, and as asked
TensorBoard and the EMA of the weights."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from graft.data.dataset import ImageData
from graft.data.transforms import Preprocessing
from graft.engine.callbacks import (
    BestWeights,
    Callback,
    EarlyStopping,
    NaNStop,
    ProgressPrinter,
    UnfreezeGate,
)
from graft.engine.checkpoint import Checkpoint, restore_rng, save_checkpoint
from graft.engine.ema import EMA
from graft.engine.loggers import CSVLogger, TensorBoardLogger
from graft.engine.metrics import Metric
from graft.engine.passes import LossFn
from graft.engine.training import FitResult, Trainer
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.distributed import world
from graft.infrastructure.errors import GraftError
from graft.infrastructure.runtime import seed_everything
from graft.models import ModelSpec

__all__ = ["Checkpointer", "FitResult", "Trainer", "fit"]


class Checkpointer(Callback):
    """Resume from ``trainer.resume`` and, with a run folder, write ``checkpoint.safetensors``
    there after every epoch (rank 0): the weights, the best weights, the optimizer and
    scheduler of the phase in progress, every generator, and the callbacks' states.

    Args:
        run_dir: The run folder (None: only resume).
        meta: JSON-ready description a resume rebuilds the learner from.

    Attributes:
        saved: Whether the folder holds a checkpoint of this run (one was written, or resumed from).
    """

    order = 50  # after everything that changes the progress or the weights kept

    def __init__(self, run_dir: str | Path | None, meta: dict) -> None:
        self.run_dir, self.meta = run_dir, meta
        self.pending: Checkpoint | None = None
        self.saved = False

    def before_fit(self, trainer: Trainer) -> None:
        self.pending = trainer.resume
        self.saved = trainer.resume is not None and self.run_dir is not None
        p = trainer.progress
        if p.history:
            trainer.log(f"resuming after epoch {p.epoch} of {sum(ph.epochs for ph in trainer.phases)}")

    def before_epoch(self, trainer: Trainer) -> None:
        if self.pending is None:
            return
        if trainer.progress.phase_epochs:  # the phase goes on: so do its optimizer and schedule
            trainer.optimizer.load_state_dict(self.pending.optimizer)
            trainer.scheduler.load_state_dict(self.pending.scheduler)
        restore_rng(self.pending.rng, trainer.runner.generators)
        self.pending = None  # the generators are back where they were: from here on, as before

    def end_epoch(self, trainer: Trainer) -> None:
        if self.run_dir is None or not world().is_main:
            return
        p = trainer.progress
        done = p.phase != trainer.phase_index  # nothing of the phase is left to resume
        best = trainer.callback(BestWeights)
        ok = save_checkpoint(
            self.run_dir,
            p,
            trainer.model,
            None if best is None or p.best_epoch == p.epoch else best.state,
            None if done else trainer.optimizer,
            None if done else trainer.scheduler,
            trainer.runner.generators,
            self.meta,
            extra=trainer.callback_states(),
        )
        self.saved = self.saved or ok


def fit(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    data: ImageData,
    cfg: TrainConfig,
    device: torch.device,
    log: Callable[[str], None] = print,
    *,
    checkpoint: str | Path | None = None,
    resume: Checkpoint | None = None,
    callbacks: Iterable[Callback] = (),
    loss: LossFn | None = None,
    metrics: Mapping[str, Metric] | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` as ``cfg`` says and leave the best weights in it.

    Frozen phases run on cached body features when ``cfg.cache_features`` is on and the head
    allows it (:func:`~graft.features.extract.feature_head`); other phases run on the images.

    Args:
        model: The network (already on ``device``).
        spec: Its :class:`ModelSpec` (tells body from head).
        pre: Its preprocessing.
        data: Train and val splits (val may be empty: then the last epoch is kept).
        cfg: A resolved :class:`TrainConfig` (``cfg.ema`` adds :class:`~graft.engine.ema.EMA`,
            ``cfg.log == "tensorboard"`` a :class:`~graft.engine.loggers.TensorBoardLogger`
            writing to ``checkpoint/tensorboard``).
        device: Where to train.
        log: Where the per-epoch table goes.
        checkpoint: A run folder: after every epoch, ``checkpoint.safetensors`` there records
            everything needed to go on, and ``history.csv`` the epochs so far (rank 0 writes them).
        resume: A checkpoint read back: training continues after its last epoch and ends as the
            uninterrupted run would have (same machine, same seed).
        callbacks: More callbacks, beside those ``fit`` always uses (:mod:`graft.engine.callbacks`).
        loss: The training loss ``(logits, targets) -> scalar`` (default: cross-entropy with
            ``cfg.label_smoothing``); also the val loss when given (default: cross-entropy).
        metrics: ``name -> fn(logits, targets) -> float`` computed on the val predictions each
            epoch, recorded as ``val_<name>`` (:mod:`graft.engine.metrics`).

    Returns:
        The history, the epoch kept and whose weights, and the files skipped.

    Raises:
        GraftError: On a NaN loss in the first epoch, or for ``--log tensorboard`` without a run folder.
    """
    seed_everything(cfg.seed)
    callbacks = list(callbacks)
    standard = _standard_callbacks(model, spec, pre, data, cfg, checkpoint, resume, callbacks)
    trainer = Trainer(
        model,
        spec,
        pre,
        data,
        cfg,
        device,
        log,
        callbacks=[*standard, *callbacks],
        loss=loss,
        metrics=metrics,
        resume=resume,
    )
    trainer.log(f"precision: {trainer.precision.describe()}")
    return trainer.fit()


def _standard_callbacks(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    data: ImageData,
    cfg: TrainConfig,
    checkpoint: str | Path | None,
    resume: Checkpoint | None,
    extra: list[Callback],
) -> list[Callback]:
    """The callbacks of ``graft train``, as ``cfg`` asks for them."""
    found = [
        ProgressPrinter(),
        UnfreezeGate(),
        BestWeights(cfg.monitor),
        EarlyStopping(cfg.patience, cfg.monitor),
        NaNStop(),
    ]
    if cfg.ema:
        found.append(EMA(cfg.ema_decay, cfg.monitor))
    if checkpoint is None and resume is None:
        keeper = None
    else:
        meta = {
            "config": cfg.to_dict(),
            "split": data.to_record(),
            "classes": list(data.classes),
            "model": spec.to_dict(),
            "preprocessing": pre.to_dict(),
        }
        keeper = Checkpointer(checkpoint, meta if checkpoint is not None and world().is_main else {})
        found.append(keeper)
    if checkpoint is not None:
        # Logs go into the run folder only beside a checkpoint of the run they belong to.
        found.append(CSVLogger(Path(checkpoint) / "history.csv", when=lambda: keeper.saved))
    if cfg.log == "tensorboard" and not any(isinstance(cb, TensorBoardLogger) for cb in extra):
        if checkpoint is None:
            raise GraftError(
                "--log tensorboard writes into the run folder: give fit a checkpoint folder, "
                "or pass callbacks=[TensorBoardLogger(log_dir)]"
            )
        found.append(TensorBoardLogger(Path(checkpoint) / "tensorboard", when=lambda: keeper.saved))
    return found
