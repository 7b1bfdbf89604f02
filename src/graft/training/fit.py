"""The training driver: phases, validation, best checkpoint, early stopping, history."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from graft.config import TrainConfig
from graft.data.dataset import ImageData
from graft.data.loaders import make_loader
from graft.data.transforms import Augmentation, Preprocessing, eval_transform, train_transform
from graft.errors import GraftError
from graft.models import ModelSpec, body_blocks
from graft.training.loop import infer, train_epoch, warn_failed
from graft.training.optim import apply_phase, make_optimizer, make_scheduler, plan_phases, set_train_mode
from graft.training.runtime import grad_scaler, seed_everything


@dataclass
class FitResult:
    """What :func:`fit` did: one history row per epoch and the epoch whose weights were kept."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped: str | None = None


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


def fit(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    data: ImageData,
    cfg: TrainConfig,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train ``model`` on ``data`` as ``cfg`` says and leave the best weights in it.

    Args:
        model: The network (already on ``device``).
        spec: Its :class:`ModelSpec` (tells body from head).
        pre: Its preprocessing.
        data: Train and val splits (val may be empty: then the last epoch is kept).
        cfg: A resolved :class:`TrainConfig`.
        device: Where to train.
        log: Where the per-epoch table goes.

    Returns:
        The history and the epoch kept.
    """
    seed_everything(cfg.seed)
    train_samples, val_samples = data.splits["train"], data.splits.get("val", [])
    aug = Augmentation(enabled=cfg.augment, min_scale=cfg.min_scale, rotate=cfg.rotate, jitter=cfg.jitter)
    pin = device.type == "cuda"
    train_loader = make_loader(
        train_samples,
        train_transform(pre, aug),
        batch_size=cfg.batch_size,
        shuffle=True,
        workers=cfg.workers,
        seed=cfg.seed,
        min_size=pre.resize_size,
        pin_memory=pin,
        # A last batch of one image breaks BatchNorm in train mode.
        drop_last=len(train_samples) > cfg.batch_size,
    )
    val_loader = (
        make_loader(
            val_samples,
            eval_transform(pre),
            batch_size=cfg.batch_size * 2,
            workers=cfg.workers,
            min_size=pre.resize_size,
            pin_memory=pin,
        )
        if val_samples
        else None
    )
    val_labels = torch.tensor([s.label for s in val_samples], dtype=torch.long)
    train_loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss()

    phases = plan_phases(cfg, [name for name, _ in body_blocks(model, spec)])
    result = FitResult()
    best_row: dict | None = None
    best_state: dict[str, torch.Tensor] | None = None
    warned: set[int] = set()
    epoch = 0
    log(HEADER)
    try:
        for phase in phases:
            groups = apply_phase(model, spec, phase)
            optimizer = make_optimizer(groups, cfg)
            scheduler = make_scheduler(optimizer, cfg, phase.epochs, len(train_loader))
            scaler = grad_scaler(device)
            stale = 0
            for _ in range(phase.epochs):
                epoch += 1
                t0 = time.perf_counter()
                set_train_mode(model, spec, phase, cfg.freeze_bn)
                stats = train_epoch(
                    model,
                    train_loader,
                    optimizer,
                    scheduler,
                    train_loss_fn,
                    device,
                    scaler,
                    cfg.aux_weight,
                    desc=f"epoch {epoch} ({phase.name})",
                )
                failed = set(stats.failed)
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
                if val_loader is not None:
                    logits, idx, val_failed = infer(model, val_loader, device, desc=f"epoch {epoch} (val)")
                    failed_val = set(val_failed)
                    warn_failed(sorted(failed_val - warned), [s.path for s in val_samples])
                    warned |= failed_val
                    if logits.numel():
                        y = val_labels[idx]
                        row["val_loss"] = val_loss_fn(logits, y).item()
                        row["val_acc"] = (logits.argmax(1) == y).float().mean().item()
                warn_failed(sorted(failed - warned), [s.path for s in train_samples])
                warned |= failed
                row["seconds"] = time.perf_counter() - t0
                result.history.append(row)
                log(_format_row(row))
                if row["val_loss"] == "" or _better(row, best_row, cfg.monitor):
                    best_row, stale = row, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    result.best_epoch = epoch
                else:
                    stale += 1
                    if cfg.patience is not None and stale >= cfg.patience:
                        log(
                            f"early stopping: {stale} epochs without {cfg.monitor} improvement ({phase.name})"
                        )
                        result.stopped = "early stopping"
                        break
    except GraftError as e:
        if best_state is None:
            raise
        log(f"training stopped: {e}")
        result.stopped = str(e)
    if best_state is not None:
        model.load_state_dict(best_state)
        if result.best_epoch != epoch:
            log(f"restored the best weights, from epoch {result.best_epoch} ({cfg.monitor})")
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return result
