"""An exponential moving average of the weights (``--ema``), validated beside the model.

timm's :class:`~timm.utils.model_ema.ModelEmaV3` keeps the average, updated after every optimizer
step with a warmup (the decay grows from 0 towards ``decay``, so a short run is not dominated by
its random start). Each epoch the average is validated too (``ema_val_loss``, ``ema_val_acc`` and
``ema_val_<metric>`` columns); at the end it replaces the model's best weights if it validated
better than they did (``trainer.kept == "ema"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from graft.engine.callbacks import Callback, better, clone_state
from graft.models.weights import load_state

if TYPE_CHECKING:
    from timm.utils.model_ema import ModelEmaV3

    from graft.engine.training import Trainer


class EMA(Callback):
    """Keep, validate and possibly keep in the end an EMA of the model's weights.

    Args:
        decay: Decay per optimizer step once warmed up (timm's ``decay``).
        monitor: Which val score decides between EMA and model (``val_acc``, ``val_loss``...).
        warmup: Use timm's decay warmup.

    Attributes:
        ema: The timm ``ModelEmaV3`` (its ``module`` is the averaged copy of the model).
        steps: Updates so far (the warmup's step count; kept across a resume).
        best_epoch: The epoch at which the EMA validated best so far.
    """

    order = 30  # after BestWeights (10): at the end, it compares with the weights that restored

    def __init__(self, decay: float = 0.998, monitor: str = "val_acc", warmup: bool = True) -> None:
        self.decay, self.monitor, self.warmup = decay, monitor, warmup
        self.ema: ModelEmaV3 | None = None
        self.steps = 0
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def before_fit(self, trainer: Trainer) -> None:
        from timm.utils.model_ema import ModelEmaV3

        self.ema = ModelEmaV3(trainer.model, decay=self.decay, use_warmup=self.warmup)
        self.load_state_dict(trainer.resumed_state(self))

    def after_step(self, trainer: Trainer) -> None:
        self.steps += 1
        self.ema.update(trainer.model, step=self.steps)

    def after_validate(self, trainer: Trainer, row: dict) -> None:
        logits, idx, _ = trainer.runner.validate(self.ema.module)
        row.update({f"ema_{k}": v for k, v in trainer.val_scores(logits, idx).items()})

    def _scores(self, row: dict) -> dict:
        return {k[4:]: v for k, v in row.items() if k.startswith("ema_val_")}

    def _best_row(self, trainer: Trainer) -> dict | None:
        return trainer.progress.history[self.best_epoch - 1] if self.best_epoch else None

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        if row["ema_val_loss"] == "":
            return  # no val split: nothing to judge the EMA by
        best = self._best_row(trainer)
        if better(self._scores(row), best and self._scores(best), self.monitor):
            self.best_epoch, self.best_state = row["epoch"], clone_state(self.ema.module)

    def after_fit(self, trainer: Trainer) -> None:
        p = trainer.progress
        ema = self._best_row(trainer)
        model = p.history[p.best_epoch - 1] if p.best_epoch else None
        if ema is None or model is None or model["val_loss"] == "":
            if p.history:
                trainer.log("kept the model's weights: no val scores to judge the EMA by")
            return
        ours, theirs = _shown(self._scores(ema)), _shown(model)
        if better(self._scores(ema), model, self.monitor):
            load_state(trainer.model, self.best_state)
            trainer.kept, trainer.kept_epoch = "ema", self.best_epoch
            trainer.log(
                f"kept the EMA weights, from epoch {self.best_epoch} ({ours}): they validated better "
                f"than the model's best, from epoch {p.best_epoch} ({theirs})"
            )
        else:
            trainer.log(
                f"kept the model's weights, from epoch {p.best_epoch} ({theirs}): the EMA's best, from "
                f"epoch {self.best_epoch} ({ours}), validated no better"
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        current = self.ema.module.state_dict()
        state = {f"weights.{k}": v for k, v in current.items()}
        state["steps"] = torch.tensor(self.steps)
        state["best_epoch"] = torch.tensor(self.best_epoch or 0)
        if self.best_state is not None:  # only what differs from the current average
            differ = {k: v for k, v in self.best_state.items() if not torch.equal(v, current[k])}
            state.update({f"best.{k}": v for k, v in differ.items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            return
        weights = {k[8:]: v for k, v in state.items() if k.startswith("weights.")}
        load_state(self.ema.module, weights)
        self.steps = int(state["steps"])
        self.best_epoch = int(state["best_epoch"]) or None
        if self.best_epoch:
            best = {**weights, **{k[5:]: v for k, v in state.items() if k.startswith("best.")}}
            current = self.ema.module.state_dict()  # on the model's device, as clone_state gives
            self.best_state = {k: v.to(current[k].device) for k, v in best.items()}


def _shown(scores: dict) -> str:
    return f"val_acc {scores['val_acc']:.4f}, val_loss {scores['val_loss']:.4f}"
