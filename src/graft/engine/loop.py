"""The inner training loop: one epoch over a loader."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from graft.data.loaders import Batch
from graft.engine.metrics import hits
from graft.features.forward import split_outputs
from graft.infrastructure.distributed import all_sum, quiet, world
from graft.infrastructure.errors import GraftError
from graft.infrastructure.memory import Pieces
from graft.infrastructure.runtime import autocast, channels_last


@dataclass
class EpochStats:
    """Mean loss and accuracy over the images seen, the head's peak learning rate, and the files
    that failed to decode."""

    loss: float = 0.0
    acc: float = 0.0
    n: int = 0
    lr_max: float = 0.0
    failed: list[int] = field(default_factory=list)


class StepHooks(Protocol):
    """What :func:`train_epoch` calls at every batch (the trainer implements it for its callbacks)."""

    def after_loss(self, loss: torch.Tensor) -> bool:
        """Called with the batch's loss once its gradients are in, before the optimizer step.

        Returns:
            True to stop the epoch here, without the step (a NaN never reaches the weights).
        """
        ...

    def after_step(self) -> bool:
        """Called after the optimizer (and scheduler) step.

        Returns:
            True to stop the epoch after this step.
        """
        ...


class RaiseOnNonFinite:
    """The hooks of a bare :func:`train_epoch` call: stop with an error on a NaN or infinite loss."""

    def __init__(self, desc: str) -> None:
        self.desc = desc

    def after_loss(self, loss: torch.Tensor) -> bool:
        check_finite(loss, self.desc)
        return False

    def after_step(self) -> bool:
        return False


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    scaler: torch.amp.GradScaler,
    aux_weight: float,
    desc: str,
    precision: str = "fp32",
    pieces: Pieces | None = None,
    hooks: StepHooks | None = None,
) -> EpochStats:
    """One pass over ``loader`` with an optimizer and scheduler step per batch.

    Out of memory, each batch is cut into pieces whose gradients are accumulated (``pieces``
    keeps the count from one epoch to the next; see :class:`~graft.infrastructure.memory.Pieces`).

    Under torch.distributed ``model`` is the DistributedDataParallel wrapper and every rank must
    take the same steps: a batch in which one rank could decode no image is skipped by all.
    The statistics returned are this rank's; the caller sums them over ranks.

    ``model`` may be any module whose output the loss takes: cached feature vectors train the
    head through this same loop (:class:`~graft.engine.passes.FeaturePass`).

    Args:
        hooks: Called at every batch, and may end the epoch early (:class:`StepHooks`). Without
            them, a NaN or infinite loss raises (:class:`RaiseOnNonFinite`).

    Raises:
        GraftError: Without ``hooks``, if the loss becomes NaN or infinite.
    """
    hooks = hooks or RaiseOnNonFinite(desc)
    stats = EpochStats()
    total_loss, correct = 0.0, 0
    ranks = world()
    pieces = pieces or Pieces("training")
    bar = tqdm(loader, desc=desc, leave=False, unit="batch", disable=quiet())
    for batch in bar:
        batch: Batch
        stats.failed += batch.failed
        empty = batch.images.numel() == 0
        if ranks.enabled:
            empty = all_sum([float(empty)])[0] > 0
        if empty:
            continue
        x = channels_last(batch.images.to(device, non_blocking=True))
        y = batch.labels.to(device, non_blocking=True)
        n = y.shape[0]

        def piece(xs: torch.Tensor, ys: torch.Tensor, n: int = n) -> tuple[torch.Tensor, torch.Tensor]:
            with autocast(device, precision):
                logits, aux = split_outputs(model(xs))
                # Weighted by the piece's share, the pieces' gradients add up to the whole batch's.
                part = (loss_fn(logits, ys) + sum(aux_weight * loss_fn(a, ys) for a in aux)) * (len(ys) / n)
            scaler.scale(part).backward()
            return part.detach(), logits.detach()

        done = pieces.run(piece, x, y, before=lambda: optimizer.zero_grad(set_to_none=True))
        loss = torch.stack([part for part, _ in done]).sum()
        logits = torch.cat([lg for _, lg in done])
        if hooks.after_loss(loss):  # before the step: a NaN never reaches the weights
            break
        scaler.step(optimizer)
        scaler.update()
        stats.lr_max = max(stats.lr_max, optimizer.param_groups[-1]["lr"])
        scheduler.step()
        total_loss += loss.item() * n
        correct += hits(logits, y)
        stats.n += n
        bar.set_postfix(loss=f"{total_loss / stats.n:.4f}")
        if hooks.after_step():
            break
    bar.close()
    if stats.n:
        stats.loss, stats.acc = total_loss / stats.n, correct / stats.n
    return stats


def non_finite(loss: torch.Tensor, desc: str) -> str | None:
    """What to say if the loss is NaN or infinite (on any rank: then every rank stops at the same
    step), else None."""
    value = loss.item()
    bad = not math.isfinite(value)
    if world().enabled:
        bad = all_sum([float(bad)])[0] > 0
    if not bad:
        return None
    what = f"became {value}" if not math.isfinite(value) else "became non-finite on another process"
    return f"loss {what} during {desc}; lower --lr (the best weights so far are kept)"


def check_finite(loss: torch.Tensor, desc: str) -> None:
    """Stop on a NaN or infinite loss (on any rank: then every rank stops at the same step).

    Raises:
        GraftError: Naming the epoch; the caller keeps the best weights so far.
    """
    message = non_finite(loss, desc)
    if message:
        raise GraftError(message)
