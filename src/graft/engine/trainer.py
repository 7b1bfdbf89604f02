"""The training driver: phases, validation, best checkpoint, early stopping, history, and the
end-of-epoch checkpoint a killed run resumes from."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from graft.data.dataset import ImageData
from graft.data.transforms import Preprocessing
from graft.engine.checkpoint import Checkpoint, Progress, restore_rng, save_checkpoint
from graft.engine.optim import (
    Phase,
    apply_phase,
    make_optimizer,
    make_scheduler,
    plan_phases,
    set_train_mode,
)
from graft.engine.passes import FeaturePass, ImagePass, feature_pass
from graft.features.extract import feature_head
from graft.features.forward import warn_failed
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.distributed import broadcast, main_only, world
from graft.infrastructure.errors import GraftError
from graft.infrastructure.runtime import PrecisionPlan, precision_plan, seed_everything
from graft.models import ModelSpec, body_blocks
from graft.models.weights import load_state


@dataclass
class FitResult:
    """What :func:`fit` did: one history row per epoch, the epoch whose weights were kept, and the
    files that could not be decoded."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped: str | None = None
    skipped: str | None = None
    failed: list[str] = field(default_factory=list)
    precision: PrecisionPlan | None = None


def _better(row: dict, best: dict | None, monitor: str) -> bool:
    if best is None:
        return True
    if monitor == "val_acc":
        # Ties in accuracy are common on small val sets: break them with the loss.
        return (row["val_acc"], -row["val_loss"]) > (best["val_acc"], -best["val_loss"])
    return row["val_loss"] < best["val_loss"]


def _format_row(row: dict) -> str:
    val = f"{row['val_loss']:9.4f}  {row['val_acc']:7.4f}" if row["val_loss"] != "" else f"{'-':>9}  {'-':>7}"
    return (
        f"{row['epoch']:>5}  {row['phase']:<8}  {row['train_loss']:10.4f}  {row['train_acc']:9.4f}  "
        f"{val}  {row['lr']:9.2e}  {row['seconds']:7.1f}"
    )


HEADER = (
    f"{'epoch':>5}  {'phase':<8}  {'train_loss':>10}  {'train_acc':>9}  "
    f"{'val_loss':>9}  {'val_acc':>7}  {'lr':>9}  {'seconds':>7}"
)


def _skip_unfreeze(phase: Phase, cfg: TrainConfig, best: dict | None) -> str | None:
    """Why the unfrozen phase is not worth running, or None to run it."""
    if phase.name != "unfrozen" or cfg.unfreeze_below is None or best is None or best["val_acc"] == "":
        return None
    # val_acc is a float32 mean: 38/40 comes out as 0.94999999, which must count as 0.95.
    if best["val_acc"] < cfg.unfreeze_below - 1e-6:
        return None
    return (
        f"skipped the unfrozen epochs: the frozen head reached val accuracy {best['val_acc']:.4f} "
        f">= {cfg.unfreeze_below} (--unfreeze-below); pass --epochs N to fine-tune anyway"
    )


def _blind_unfreeze(phase: Phase, cfg: TrainConfig, has_val: bool) -> str | None:
    """What to say when the unfrozen phase runs only because there is no val split to judge by."""
    if phase.name != "unfrozen" or cfg.unfreeze_below is None or has_val:
        return None
    return (
        "no val split to judge the frozen head by (--unfreeze-below): the unfrozen epochs run and the "
        "last epoch is kept; --epochs 0 keeps the frozen head"
    )


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
) -> FitResult:
    """Train ``model`` on ``data`` as ``cfg`` says and leave the best weights in it.

    Frozen phases run on cached body features when ``cfg.cache_features`` is on and the head
    allows it (:func:`~graft.features.extract.feature_head`); other phases run on the images.

    Args:
        model: The network (already on ``device``).
        spec: Its :class:`ModelSpec` (tells body from head).
        pre: Its preprocessing.
        data: Train and val splits (val may be empty: then the last epoch is kept).
        cfg: A resolved :class:`TrainConfig`.
        device: Where to train.
        log: Where the per-epoch table goes.
        checkpoint: A run folder: after every epoch, ``checkpoint.safetensors`` there records
            everything needed to go on (rank 0 writes it).
        resume: A checkpoint read back: training continues after its last epoch and ends as the
            uninterrupted run would have (same machine, same seed).

    Returns:
        The history, the epoch kept, and the files skipped.
    """
    seed_everything(cfg.seed)
    log = main_only(log)
    train_samples, val_samples = data.splits["train"], data.splits.get("val", [])
    val_labels = torch.tensor([s.label for s in val_samples], dtype=torch.long)
    train_loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss()
    write = checkpoint is not None and world().is_main
    meta = (
        {
            "config": cfg.to_dict(),
            "split": data.to_record(),
            "classes": list(data.classes),
            "model": spec.to_dict(),
            "preprocessing": pre.to_dict(),
        }
        if write
        else {}
    )

    phases = plan_phases(cfg, [name for name, _ in body_blocks(model, spec)])
    precision = precision_plan(cfg.precision, device)
    log(f"precision: {precision.describe()}")
    cached = cfg.cache_features and feature_head(model, spec) is not None
    passes: dict[str, ImagePass | FeaturePass] = {}
    state = resume.progress if resume is not None else Progress()
    best_state: dict[str, torch.Tensor] | None = None
    if resume is not None:
        load_state(model, resume.model)
        best_state = resume.best or {k: v.detach().clone() for k, v in model.state_dict().items()}
        if state.history:
            log(f"resuming after epoch {state.epoch} of {sum(p.epochs for p in phases)}")
    best_row = state.history[state.best_epoch - 1] if state.best_epoch else None
    failed_seen = set(state.failed)
    header = False
    try:
        for index, phase in enumerate(phases):
            if index < state.phase:
                continue
            fresh = state.phase_epochs == 0
            skip = _skip_unfreeze(phase, cfg, best_row) if fresh else None
            if skip:
                log(skip)
                state.skipped = skip
                state.phase += 1
                continue
            blind = _blind_unfreeze(phase, cfg, bool(val_samples)) if fresh else None
            if blind:
                log(blind)
            kind = "features" if phase.name == "frozen" and cached else "images"
            if kind not in passes:
                passes[kind] = (
                    feature_pass(model, spec, pre, data, cfg, device, precision, log)
                    if kind == "features"
                    else ImagePass(model, pre, data, cfg, device, precision)
                )
                if kind == "images":
                    passes[kind].epochs_run = state.image_epochs
                if not header:
                    header = True
                    log(HEADER)
                    for old in state.history:  # a resumed run shows its whole table
                        log(_format_row(old))
            runner = passes[kind]
            generators = {"features": runner.generator} if kind == "features" else {}
            groups = apply_phase(model, spec, phase)
            optimizer = make_optimizer(groups, cfg)
            scheduler = make_scheduler(optimizer, cfg, phase.epochs, runner.steps_per_epoch)
            if resume is not None:
                if not fresh:
                    optimizer.load_state_dict(resume.optimizer)
                    scheduler.load_state_dict(resume.scheduler)
                restore_rng(resume.rng, generators)
                resume = None  # the generators are back where they were: from here on, as before
            while True:
                epoch = state.epoch + 1
                t0 = time.perf_counter()
                set_train_mode(model, spec, phase, cfg.freeze_bn)
                stats = runner.train_epoch(
                    optimizer, scheduler, train_loss_fn, f"epoch {epoch} ({phase.name})"
                )
                row = {
                    "epoch": epoch,
                    "phase": phase.name,
                    "train_loss": stats.loss,
                    "train_acc": stats.acc,
                    "val_loss": "",
                    "val_acc": "",
                    "lr": stats.lr_max,
                    "seconds": 0.0,
                }
                logits, idx, val_failed = runner.validate()
                if logits.numel():
                    y = val_labels[idx]
                    row["val_loss"] = val_loss_fn(logits, y).item()
                    row["val_acc"] = (logits.argmax(1) == y).float().mean().item()
                for samples, failed in ((val_samples, val_failed), (train_samples, stats.failed)):
                    new = sorted({i for i in failed if str(samples[i].path) not in failed_seen})
                    warn_failed(new, [s.path for s in samples])
                    failed_seen.update(str(samples[i].path) for i in new)
                row["seconds"] = time.perf_counter() - t0
                # Rank 0's row decides for all (best epoch, early stopping), so ranks never part ways.
                row = broadcast(row)
                state.history.append(row)
                state.epoch, state.phase_epochs = epoch, state.phase_epochs + 1
                if kind == "images":
                    state.image_epochs = runner.epochs_run
                log(_format_row(row))
                if row["val_loss"] == "" or _better(row, best_row, cfg.monitor):
                    best_row, state.stale, state.best_epoch = row, 0, epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    state.stale += 1
                    if cfg.patience is not None and state.stale >= cfg.patience:
                        log(
                            f"early stopping: {state.stale} epochs without {cfg.monitor} improvement "
                            f"({phase.name})"
                        )
                        state.stopped = "early stopping"
                        state.phase_epochs = phase.epochs  # this phase is over
                state.failed = sorted(failed_seen)
                done = state.phase_epochs >= phase.epochs
                if done:
                    state.phase, state.phase_epochs, state.stale = index + 1, 0, 0
                if write:
                    save_checkpoint(
                        checkpoint,
                        state,
                        model,
                        None if state.best_epoch == epoch else best_state,
                        None if done else optimizer,
                        None if done else scheduler,
                        generators,
                        meta,
                    )
                if done:
                    break
    except GraftError as e:
        if best_state is None:
            raise
        log(f"training stopped: {e}")
        state.stopped = str(e)
    if best_state is not None:
        load_state(model, best_state)
        if state.best_epoch != state.epoch:
            log(f"restored the best weights, from epoch {state.best_epoch} ({cfg.monitor})")
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return FitResult(
        state.history, state.best_epoch, state.stopped, state.skipped, sorted(failed_seen), precision
    )
