"""The learning-rate range test (Smith 2015; fastai's ``lr_find``): the trainer's own loop with
one callback, :class:`LRRange`.

Train for up to ``num_it`` batches while the learning rate grows exponentially from ``start_lr``
to ``end_lr``, record the smoothed loss, stop once it diverges, then put the weights back. The
suggested rate is fastai's "valley": a point a little way into the longest stretch over which
the loss keeps falling.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from graft.data.dataset import ImageData
from graft.data.transforms import Preprocessing
from graft.engine.callbacks import Callback
from graft.engine.optim import plan_phases
from graft.engine.training import Trainer
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.errors import GraftError
from graft.models import ModelSpec, body_blocks
from graft.models.weights import load_state

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# fastai's choices: an exponential moving average of the loss, and "diverged" = 4× its best value.
SMOOTHING, DIVERGED = 0.98, 4.0


@dataclass
class LRFind:
    """What the range test measured.

    Attributes:
        lrs: The head's learning rate at each step.
        losses: The smoothed (bias-corrected moving average) training loss at each step.
        suggestion: The suggested peak learning rate (None when the test was too short).
        phase: Which parameters were trained (``frozen``: the head; ``unfrozen``/``full``: more).
        seconds: Wall time of the test.
        stopped: Why it ended: ``diverged`` or ``num_it``.
    """

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    suggestion: float | None = None
    phase: str = ""
    seconds: float = 0.0
    stopped: str = ""

    def plot(self) -> Figure:
        """Loss against learning rate, with the suggestion marked."""
        import numpy as np
        from matplotlib.figure import Figure

        lrs, losses, suggestion = self.lrs, self.losses, self.suggestion
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        ax.plot(lrs, losses)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        ax.grid(alpha=0.3)
        if suggestion is not None and len(lrs):
            y = float(np.interp(math.log10(suggestion), np.log10(lrs), losses))
            ax.plot([suggestion], [y], "o", color="tab:red", label=f"suggested {suggestion:.2e}")
            ax.legend(loc="best")
        ax.set_title("learning-rate range test")
        fig.tight_layout()
        return fig

    def to_csv(self) -> str:
        """``lr,loss`` rows."""
        out = io.StringIO()
        out.write("lr,loss\n")
        for lr, loss in zip(self.lrs, self.losses, strict=True):
            out.write(f"{lr:.6g},{loss:.6g}\n")
        return out.getvalue()


def valley(lrs: list[float], losses: list[float]) -> float | None:
    """fastai's ``valley`` rule: in the longest run of steps over which the loss decreases (a
    longest decreasing subsequence), the point about half-way along it."""
    n = len(losses)
    if n < 2:
        return None
    lengths = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
            if lengths[end] < lengths[i]:
                end, start = i, i - lengths[i]
    third = (end - start) / 3
    return float(lrs[start + int(third) + int(third / 2)])


class LRRange(Callback):
    """The range test as a callback: the learning rate grows exponentially with every step, the
    smoothed loss of each step is recorded in ``result``, and the trainer is stopped at
    ``num_it`` steps or once the loss diverges.

    Args:
        result: Where the steps go (``lrs``, ``losses``, ``stopped``).
        start_lr: The head's first learning rate.
        end_lr: Its rate after ``num_it`` steps.
        num_it: Steps at most.
    """

    def __init__(self, result: LRFind, start_lr: float, end_lr: float, num_it: int) -> None:
        self.result, self.start_lr, self.end_lr, self.num_it = result, start_lr, end_lr, num_it
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.average, self.best, self.before = 0.0, math.inf, 0

    def before_epoch(self, trainer: Trainer) -> None:
        if self.scheduler is None:  # the sweep replaces the phase's schedule
            ratio, lr = self.end_lr / self.start_lr, trainer.phase.lr
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                trainer.optimizer, lambda step: self.start_lr * ratio ** (step / self.num_it) / lr
            )
            trainer.scheduler = self.scheduler
        self.before = len(self.result.losses)

    def after_loss(self, trainer: Trainer, loss: torch.Tensor) -> None:
        result, value = self.result, loss.item()
        if not math.isfinite(value):
            result.stopped = "diverged"
            trainer.stop()
            return
        step = len(result.losses)
        self.average = SMOOTHING * self.average + (1 - SMOOTHING) * value
        smooth = self.average / (1 - SMOOTHING ** (step + 1))
        result.lrs.append(trainer.optimizer.param_groups[-1]["lr"])
        result.losses.append(smooth)
        self.best = min(self.best, smooth)
        if smooth > DIVERGED * self.best:
            result.stopped = "diverged"
            trainer.stop()
        elif step + 1 >= self.num_it:
            result.stopped = "num_it"
            trainer.stop()

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        if len(self.result.losses) == self.before:
            trainer.stop()  # an epoch without a single batch: nothing more to learn from


def lr_find(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    data: ImageData,
    cfg: TrainConfig,
    device: torch.device,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    log: Callable[[str], None] = print,
) -> LRFind:
    """Run the range test on the parameters that the first phase of ``cfg`` trains.

    For ``finetune`` and ``features`` that is the head on the frozen body (on cached features when
    the head allows it, so it takes a second); for ``full`` and ``scratch``, the whole network.
    The model's weights are restored afterwards.

    Args:
        cfg: A resolved config (its optimizer, weight decay, batch size and augmentation are used;
            its ``lr`` only sets the ratios between parameter groups).
        start_lr: First learning rate of the head.
        end_lr: Last learning rate (reached after ``num_it`` steps, unless the loss diverges first).
        num_it: Steps (batches) at most; the training set is repeated as needed.

    Raises:
        GraftError: For an empty or inverted range.
    """
    if not 0 < start_lr < end_lr or num_it < 6:
        raise GraftError("lr-find needs 0 < start lr < end lr and at least 6 steps")
    phase = plan_phases(cfg, [name for name, _ in body_blocks(model, spec)])[0]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    result = LRFind(phase=phase.name)
    # Training only: no val split to score (each epoch has a step, so num_it epochs are enough).
    train_only = dataclasses.replace(data, splits={"train": data.splits["train"]})
    trainer = Trainer(
        model,
        spec,
        pre,
        train_only,
        cfg,
        device,
        log,
        callbacks=[LRRange(result, start_lr, end_lr, num_it)],
        phases=[dataclasses.replace(phase, epochs=num_it)],
    )
    try:
        trainer.fit()
    finally:
        load_state(model, state)
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    # As fastai: leave out the first tenth (the average is still settling) and the last five
    # steps (already diverging).
    skip = num_it // 10
    result.suggestion = valley(result.lrs[skip:-5], result.losses[skip:-5])
    result.seconds = time.perf_counter() - t0
    return result
