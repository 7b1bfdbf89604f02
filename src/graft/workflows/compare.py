"""Pretrained versus from scratch: the same network and training budget, two starting points.

The classic experiment of the transfer-learning tutorials: train one architecture twice, once
from ImageNet weights and once from random weights, for the same epochs with the same optimizer
and schedule, and plot validation accuracy per epoch for both.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from graft.infrastructure.config import TrainConfig
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import atomic_write_text
from graft.learner.factories import load_data
from graft.learner.learner import Learner
from graft.workflows.train import train

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COMPARE_EPOCHS = 5
PRETRAINED_MODES = ("finetune", "full", "features")


@dataclass
class Comparison:
    """Validation accuracy per epoch of each run (``pretrained`` and ``scratch``).

    Attributes:
        arch: The architecture both runs trained.
        val_acc: Per run, validation accuracy after each epoch.
        val_loss: Per run, validation loss after each epoch.
        seconds: Per run, training time.
        pretrained_mode: How the pretrained run trained (``finetune``: every weight, the body at
            lower rates).
    """

    arch: str
    val_acc: dict[str, list[float]] = field(default_factory=dict)
    val_loss: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    pretrained_mode: str = "finetune"

    def best(self, run: str) -> tuple[float, int]:
        """Best validation accuracy of a run and its (1-based) epoch."""
        values = self.val_acc[run]
        i = max(range(len(values)), key=lambda k: (values[k], -k))
        return values[i], i + 1

    def plot(self) -> Figure:
        """Validation accuracy per epoch, one line per run."""
        from graft.evaluation.plots import plot_compare

        return plot_compare(self.val_acc, f"{self.arch}: pretrained vs scratch")

    def table(self) -> str:
        """Per-epoch accuracies, then each run's best epoch and training time."""
        runs = list(self.val_acc)
        lines = [f"{'epoch':>5}  " + "  ".join(f"{r:>10}" for r in runs)]
        for e in range(max(len(v) for v in self.val_acc.values())):
            cells = [self.val_acc[r][e] if e < len(self.val_acc[r]) else math.nan for r in runs]
            lines.append(f"{e + 1:>5}  " + "  ".join(f"{c:>10.4f}" for c in cells))
        lines.append(f"{'best':>5}  " + "  ".join(f"{self.best(r)[0]:>10.4f}" for r in runs))
        lines.append(f"{'at':>5}  " + "  ".join(f"{'epoch ' + str(self.best(r)[1]):>10}" for r in runs))
        lines.append(f"{'secs':>5}  " + "  ".join(f"{self.seconds[r]:>10.1f}" for r in runs))
        return "\n".join(lines)

    def to_csv(self) -> str:
        """``epoch,<run>_val_acc,<run>_val_loss,…`` rows."""
        runs = list(self.val_acc)
        rows = ["epoch," + ",".join(f"{r}_val_acc,{r}_val_loss" for r in runs)]
        for e in range(max(len(v) for v in self.val_acc.values())):
            cells = []
            for r in runs:
                acc, loss = self.val_acc[r], self.val_loss[r]
                cells += [f"{acc[e]:.6g}" if e < len(acc) else "", f"{loss[e]:.6g}" if e < len(loss) else ""]
            rows.append(f"{e + 1}," + ",".join(cells))
        return "\n".join(rows) + "\n"


def compare(
    config: TrainConfig,
    *,
    pretrained_mode: str = "finetune",
    out: str | Path | None = None,
    overwrite: bool = True,
    log: Callable[[str], None] = print,
) -> Comparison:
    """Train ``config.arch`` pretrained and from scratch with the same budget.

    Both runs use ``config``'s epochs (default 5), optimizer, learning rate, schedule, batch size,
    augmentation and seed; only the starting weights differ (and what ``pretrained_mode`` trains).

    Args:
        config: The training options (``mode`` and ``pretrained`` are set here).
        pretrained_mode: ``finetune`` (every weight trains, the body at discriminative rates
            from ``lr / 2 / lr_mult`` up to ``lr / 2``, as fine-tuning does), ``full`` (every weight
            at ``lr``, exactly as from scratch; AdamW at 2e-3 wrecks ImageNet features this way:
            hymenoptera val stayed at 0.46-0.54), or ``features`` (only the head trains: the tutorials'
            "feature extraction").
        out: Folder for ``compare.png``/``compare.csv``/``compare.json`` and the two runs
            (``pretrained/`` and ``scratch/``, each a run folder written by
            :func:`graft.workflows.train.train`, as ``graft train`` writes one); None writes nothing.
        overwrite: Replace runs already in ``out`` (``graft compare`` asks for ``--overwrite``
            before it gets here).
        log: Receives progress lines.

    Raises:
        GraftError: If the data has no validation split, or an option is invalid.
    """
    if pretrained_mode not in PRETRAINED_MODES:
        raise GraftError(
            f"unknown pretrained mode '{pretrained_mode}'; choose one of {', '.join(PRETRAINED_MODES)}"
        )
    epochs = config.epochs or COMPARE_EPOCHS
    base = dataclasses.replace(config, epochs=epochs, freeze_epochs=0, unfreeze_below=None)
    runs = {
        "pretrained": dataclasses.replace(base, mode=pretrained_mode, pretrained=True),
        "scratch": dataclasses.replace(base, mode="scratch", pretrained=False, weights=None),
    }
    for cfg in runs.values():
        cfg.resolved()  # both runs' options are valid before either trains
    data = load_data(config)
    if not data.splits.get("val"):
        raise GraftError("compare needs a validation split to plot")
    result = Comparison(arch=config.arch, pretrained_mode=pretrained_mode)
    for name, cfg in runs.items():
        log(f"--- {name}: {cfg.arch}, mode {cfg.mode}, {epochs} epochs")
        if out is None:  # nothing to write: training alone
            learn = Learner.from_config(cfg, data=data)
            learn.fit(log=log)
        else:  # the run folder graft train writes
            cfg = dataclasses.replace(cfg, out=str(Path(out) / name))
            learn = train(cfg, overwrite=overwrite, data=data, log=log).learner
        result.val_acc[name] = [float(r["val_acc"]) for r in learn.history]
        result.val_loss[name] = [float(r["val_loss"]) for r in learn.history]
        result.seconds[name] = float(learn.metrics["train_seconds"])
    if out is not None:
        _write(result, Path(out))
    return result


def _write(result: Comparison, out: Path) -> None:
    from graft.evaluation.plots import save_png

    save_png(result.plot(), out / "compare.png")
    atomic_write_text(out / "compare.csv", result.to_csv())
    summary = {
        "arch": result.arch,
        "pretrained_mode": result.pretrained_mode,
        "runs": {
            name: {
                "best_val_acc": result.best(name)[0],
                "best_epoch": result.best(name)[1],
                "train_seconds": result.seconds[name],
                "val_acc": result.val_acc[name],
            }
            for name in result.val_acc
        },
    }
    atomic_write_text(out / "compare.json", json.dumps(summary, indent=2) + "\n")
