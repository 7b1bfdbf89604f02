"""The :class:`Trainer`: a loop over phases and epochs, short enough to read in one go; every
other job (the table, best weights, early stopping, checkpoints, logging, the EMA...) is a
callback (:mod:`graft.engine.callbacks`). :func:`graft.engine.trainer.fit` runs it with the
callbacks of ``graft train``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from graft.data.dataset import ImageData
from graft.data.transforms import Preprocessing
from graft.engine.callbacks import Callback
from graft.engine.checkpoint import Checkpoint, Progress
from graft.engine.losses import default_losses
from graft.engine.metrics import Metric, standard_metrics, val_scores
from graft.engine.optim import Phase, apply_phase, make_optimizer, make_scheduler, plan_phases, set_train_mode
from graft.engine.passes import ImagePass, LossFn, Pass, feature_pass
from graft.engine.prefix import prefix_pass
from graft.features.extract import feature_head
from graft.features.forward import warn_failed
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.distributed import broadcast, main_only, world
from graft.infrastructure.errors import GraftError
from graft.infrastructure.runtime import PrecisionPlan, precision_plan
from graft.models import ModelSpec, body_blocks
from graft.models.split import PrefixSplit, prefix_split
from graft.models.weights import load_state


@dataclass
class FitResult:
    """What :func:`graft.engine.trainer.fit` did.

    Attributes:
        history: One row per epoch (the same keys in each).
        best_epoch: The epoch whose weights were kept (of the EMA when ``kept == "ema"``).
        stopped: Why training stopped early, if it did (early stopping, a NaN loss, ...).
        unfreeze_skipped: Why the unfrozen phase was skipped, if it was (``--unfreeze-below``).
        failed: Files that could not be decoded.
        precision: The precisions used.
        kept: Whose weights the model holds: ``"model"`` (its best epoch) or ``"ema"``.
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped: str | None = None
    unfreeze_skipped: str | None = None
    failed: list[str] = field(default_factory=list)
    precision: PrecisionPlan | None = None
    kept: str = "model"

    @property
    def skipped(self) -> str | None:
        """Former name of :attr:`unfreeze_skipped` (read-only)."""
        return self.unfreeze_skipped


class Trainer:
    """Trains ``model`` phase by phase, epoch by epoch; callbacks do everything else.

    Args:
        model: The network (already on ``device``).
        spec: Its :class:`ModelSpec` (tells body from head).
        pre: Its preprocessing.
        data: Train and val splits (val may be empty).
        cfg: A resolved :class:`TrainConfig`.
        device: Where to train.
        log: Where messages go (rank 0 only).
        callbacks: :class:`~graft.engine.callbacks.Callback` objects, run in their ``order``.
        loss: Training loss ``(logits, targets) -> scalar`` (default:
            :func:`~graft.engine.losses.default_losses`: cross-entropy with ``cfg.label_smoothing``
            and, under ``balance="weights"``, class weights; multi-label, binary cross-entropy);
            also the val loss when given (default: the plain loss).
        metrics: ``name -> fn(logits, targets) -> float`` on the val predictions, each a
            ``val_<name>`` column (:mod:`graft.engine.metrics`); loss, accuracy and
            :func:`~graft.engine.metrics.standard_metrics` are always there.
        resume: A checkpoint read back: the model and progress start from it, and the
            callbacks take back their parts of it.
        phases: The phases to run (default: :func:`plan_phases` of ``cfg``).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        pre: Preprocessing,
        data: ImageData,
        cfg: TrainConfig,
        device: torch.device,
        log: Callable[[str], None] = print,
        *,
        callbacks: Iterable[Callback] = (),
        loss: LossFn | None = None,
        metrics: Mapping[str, Metric] | None = None,
        resume: Checkpoint | None = None,
        phases: list[Phase] | None = None,
    ) -> None:
        self.model, self.spec, self.pre, self.data = model, spec, pre, data
        self.cfg, self.device = cfg, device
        self.log = main_only(log)
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        train_loss, val_loss = default_losses(data, cfg, device)
        self.loss_fn, self.val_loss_fn = loss or train_loss, loss or val_loss
        self.metrics = standard_metrics(data.multi_label) | dict(metrics or {})
        if {"loss", "acc"} & set(self.metrics):
            raise GraftError("metrics named 'loss' or 'acc' would hide val_loss and val_acc: rename them")
        if phases is None:
            phases = plan_phases(cfg, [name for name, _ in body_blocks(model, spec)])
        self.phases = phases
        self.precision = precision_plan(cfg.precision, device)
        self.resume = resume
        self.progress = resume.progress if resume is not None else Progress()
        if resume is not None:
            load_state(model, resume.model)
        self.val_labels = data.targets("val")
        self.failed_seen = set(self.progress.failed)
        self.passes: dict[str, Pass] = {}
        self._splits: dict[tuple[str, ...], PrefixSplit | None] = {}
        self.phase_index, self.phase, self.runner = 0, self.phases[0] if self.phases else None, None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.desc, self.steps = "", 0
        self.stopping = self.skipping = self.ending = False
        self.kept, self.kept_epoch = "model", None

    # The loop. Everything else is in the callbacks.

    def fit(self) -> FitResult:
        """Run every phase (from where ``resume`` left off) and return what happened."""
        self._call("before_fit")
        for index, phase in enumerate(self.phases):
            self.phase_index, self.phase = index, phase
            if self.stopping or index < self.progress.phase or not self._begin_phase():
                continue
            while self.progress.phase == self.phase_index and not self.stopping:
                self._epoch()
        self._call("after_fit")
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model.eval()
        return self.result()

    def _begin_phase(self) -> bool:
        """Set up the phase's pass, optimizer and schedule; False if a callback skipped it."""
        self.skipping = False
        self._call("before_phase")
        if self.skipping:
            self.progress.phase += 1
            return False
        self.runner = self._pass(self.phase)
        self.optimizer = make_optimizer(apply_phase(self.model, self.spec, self.phase), self.cfg)
        steps = self.runner.steps_per_epoch
        self.scheduler = make_scheduler(self.optimizer, self.cfg, self.phase.epochs, steps)
        return True

    def _epoch(self) -> None:
        p, t0 = self.progress, time.perf_counter()
        epoch, self.ending = p.epoch + 1, False
        self.desc = f"epoch {epoch} ({self.phase.name})"
        self._call("before_epoch")
        set_train_mode(self.model, self.spec, self.phase, self.cfg.freeze_bn)
        stats = self.runner.train_epoch(self.optimizer, self.scheduler, self.loss_fn, self.desc, _Hooks(self))
        if self.stopping:
            return  # stopped within the epoch: it is not recorded
        logits, idx, val_failed = self.runner.validate()
        row = {"epoch": epoch, "phase": self.phase.name, "train_loss": stats.loss, "train_acc": stats.acc}
        row |= self.val_scores(logits, idx) | {"lr": stats.lr_max, "seconds": 0.0}
        self._note_failed(val_failed, stats.failed)
        self._call("after_validate", row)
        row["seconds"] = time.perf_counter() - t0
        row = broadcast(row)  # rank 0's row decides for all (best epoch, early stopping)
        p.history.append(row)
        p.epoch, p.phase_epochs, p.failed = epoch, p.phase_epochs + 1, sorted(self.failed_seen)
        if "images" in self.passes:
            p.image_epochs = self.passes["images"].epochs_run
        self._call("after_epoch", row)
        if self.ending or p.phase_epochs >= self.phase.epochs:
            p.phase, p.phase_epochs, p.stale = self.phase_index + 1, 0, 0
        self._call("end_epoch")

    # What callbacks call.

    def stop(self, reason: str | None = None) -> None:
        """End training after this batch (a batch stopped in ``after_loss`` takes no step) or, from
        the epoch's later hooks, after this epoch. A ``reason`` is logged and recorded in
        ``progress.stopped``."""
        self.stopping = True
        if reason:
            self.log(f"training stopped: {reason}")
            self.progress.stopped = reason

    def end_phase(self) -> None:
        """End the current phase after this epoch (the next one, if any, goes on)."""
        self.ending = True

    def skip_phase(self) -> None:
        """From ``before_phase``: do not run this phase."""
        self.skipping = True

    def callback(self, kind: type[Callback]) -> Callback | None:
        """The first callback of type ``kind``, or None."""
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)

    def val_scores(self, logits: torch.Tensor, idx: torch.Tensor) -> dict[str, float | str]:
        """``val_loss``, ``val_acc`` and every metric's ``val_<name>`` for val logits of samples
        ``idx`` (``""`` each without a val split)."""
        return val_scores(logits, self.val_labels[idx], self.val_loss_fn, self.metrics)

    def resumed_state(self, cb: Callback) -> dict[str, torch.Tensor]:
        """What ``cb.state_dict()`` gave to the checkpoint resumed from (empty if none)."""
        prefix = f"{cb.name}."
        extra = self.resume.extra if self.resume is not None else {}
        return {k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)}

    def callback_states(self) -> dict[str, torch.Tensor]:
        """Every callback's :meth:`~Callback.state_dict`, for the checkpoint."""
        return {f"{cb.name}.{k}": v for cb in self.callbacks for k, v in cb.state_dict().items()}

    def result(self) -> FitResult:
        p = self.progress
        best = self.kept_epoch if self.kept == "ema" else p.best_epoch
        failed = sorted(self.failed_seen)
        return FitResult(p.history, best, p.stopped, p.unfreeze_skipped, failed, self.precision, self.kept)

    # Helpers.

    def _call(self, hook: str, *args: object) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _pass(self, phase: Phase) -> Pass:
        """The pass the phase runs on: cached features for a frozen head that allows it, cached
        prefix activations when the trained blocks leave a frozen prefix, else the images (each
        built once; a resumed image pass goes on with its sampler's epochs)."""
        args = (self.model, self.spec, self.pre, self.data, self.cfg, self.device, self.precision)
        cached = self.cfg.cache_features and feature_head(self.model, self.spec) is not None
        if phase.name == "frozen" and cached:
            if "features" not in self.passes:
                later = next((self._split(p) for p in self.phases if p.name != "frozen"), None)
                self.passes["features"] = feature_pass(*args, self.log, split=later)
            return self.passes["features"]
        split = self._split(phase)
        if split is not None and f"prefix:{split.first}" not in self.passes:
            top = prefix_pass(*args, split, self.log)
            if top is None:  # the activations could not all be cached: train on the images
                self._splits[tuple(phase.blocks)] = split = None
            else:
                self.passes[f"prefix:{split.first}"] = top
        if split is not None:
            return self.passes[f"prefix:{split.first}"]
        if "images" not in self.passes:
            runner = ImagePass(self.model, self.pre, self.data, self.cfg, self.device, self.precision)
            runner.epochs_run = self.progress.image_epochs
            self.passes["images"] = runner
        return self.passes["images"]

    def _split(self, phase: Phase) -> PrefixSplit | None:
        """Where ``phase``'s model is cut for cached-prefix training (None: it trains on images)."""
        if phase.name == "frozen" or not self.cfg.cache_prefix or world().enabled or self.cfg.compile:
            return None
        key = tuple(phase.blocks)
        if key not in self._splits:
            self._splits[key] = prefix_split(self.model, self.spec, phase.blocks, self.pre.input_size)
        return self._splits[key]

    def _note_failed(self, *failed_per_split: list[int]) -> None:
        """Warn once about each file of val, then train, that could not be decoded."""
        splits = (self.data.splits.get("val", []), self.data.splits["train"])
        for samples, failed in zip(splits, failed_per_split, strict=True):
            new = sorted({i for i in failed if str(samples[i].path) not in self.failed_seen})
            warn_failed(new, [s.path for s in samples])
            self.failed_seen.update(str(samples[i].path) for i in new)


class _Hooks:
    """The per-batch hooks :func:`~graft.engine.loop.train_epoch` calls, sent to the callbacks."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def after_loss(self, loss: torch.Tensor) -> bool:
        self.trainer._call("after_loss", loss)
        return self.trainer.stopping

    def after_step(self) -> bool:
        self.trainer.steps += 1
        self.trainer._call("after_step")
        return self.trainer.stopping
