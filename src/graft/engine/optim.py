"""Parameter groups (frozen / selective / discriminative), optimizers and learning-rate schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from graft.infrastructure.config import TrainConfig
from graft.infrastructure.errors import GraftError
from graft.models import ModelSpec, body_blocks, head_parameters


@dataclass
class Phase:
    """One stretch of training with a fixed set of trainable parameters.

    Attributes:
        name: ``frozen`` (head only), ``unfrozen`` (finetune after the frozen epochs) or ``full``.
        epochs: Number of epochs.
        lr: Peak learning rate of the head.
        lr_mult: Ratio of head lr to the first trainable body block's lr (1 = one rate for all).
        blocks: Body blocks trained in this phase (names from ``body_blocks``).
        body: Every body block, in order: a trained block's rate follows its depth among them,
            whichever blocks train (empty: spaced over ``blocks``).
    """

    name: str
    epochs: int
    lr: float
    lr_mult: float
    blocks: list[str]
    body: list[str] = field(default_factory=list)


def plan_phases(cfg: TrainConfig, block_names: list[str]) -> list[Phase]:
    """Turn a resolved config into the phases to run, in order.

    ``finetune`` follows fastai's ``fine_tune``: ``freeze_epochs`` with the body frozen at ``lr``,
    then ``epochs`` with the body unfrozen at ``lr / 2`` and discriminative rates down to
    ``lr / 2 / lr_mult`` for the first block. ``full`` and ``scratch`` train at ``lr`` with rates
    down to ``lr / lr_mult`` (fastai's ``fit_one_cycle(n, slice(lr / lr_mult, lr))``; ``lr_mult``
    1 by default). With ``unfreeze``, each trained block keeps the rate of its depth in the body.
    """
    every = not cfg.unfreeze or cfg.unfreeze == ["all"]
    trainable = list(block_names) if every else select_blocks(block_names, cfg.unfreeze)
    phases = []
    if cfg.mode == "features":
        phases.append(Phase("frozen", cfg.epochs, cfg.lr, 1.0, []))
    elif cfg.mode == "finetune":
        if cfg.freeze_epochs:
            phases.append(Phase("frozen", cfg.freeze_epochs, cfg.lr, 1.0, []))
        if cfg.epochs:
            phases.append(
                Phase("unfrozen", cfg.epochs, cfg.lr / 2, cfg.lr_mult, trainable, list(block_names))
            )
    else:  # full, scratch: one rate (lr_mult 1) unless lr_mult asks for discriminative rates
        phases.append(Phase("full", cfg.epochs, cfg.lr, cfg.lr_mult, trainable, list(block_names)))
    return [p for p in phases if p.epochs > 0]


def select_blocks(block_names: list[str], wanted: list[str]) -> list[str]:
    """Blocks named in ``wanted`` (a name selects itself and every block below it, e.g. ``blocks``
    selects ``blocks.0`` … ``blocks.6``), in model order.

    Raises:
        GraftError: If a name matches no block; the message lists the valid ones.
    """
    chosen = set()
    for name in wanted:
        hits = [b for b in block_names if b == name or b.startswith(name + ".") or name.startswith(b + ".")]
        if not hits:
            raise GraftError(
                f"--unfreeze: no body block named '{name}'; blocks are: {', '.join(block_names)}"
            )
        chosen.update(hits)
    return [b for b in block_names if b in chosen]


def apply_phase(model: nn.Module, spec: ModelSpec, phase: Phase) -> list[dict]:
    """Set ``requires_grad`` for the phase and return optimizer parameter groups.

    Frozen blocks are also kept in eval mode by :func:`set_train_mode` so their BatchNorm
    statistics stay those of the pretrained body. Norm weights and biases get no weight decay.
    """
    blocks = body_blocks(model, spec)
    trainable = set(phase.blocks)
    for name, params in blocks:
        for p in params:
            p.requires_grad_(name in trainable)
    head = head_parameters(model, spec)
    for p in head:
        p.requires_grad_(True)

    order = [(name, params) for name, params in blocks if name in trainable]
    depth = phase.body or [name for name, _ in order]
    groups: list[dict] = []
    for name, params in order:
        # Geometric spacing from lr/lr_mult (first body block) towards lr (head).
        i = depth.index(name) if name in depth else 0
        lr = phase.lr / phase.lr_mult * phase.lr_mult ** (i / max(len(depth), 1))
        groups += _decay_split(params, lr)
    groups += _decay_split(head, phase.lr)
    return groups


def _decay_split(params: list[nn.Parameter], lr: float) -> list[dict]:
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [
        g
        for g in ({"params": decay, "lr": lr}, {"params": no_decay, "lr": lr, "weight_decay": 0.0})
        if g["params"]
    ]


def set_train_mode(model: nn.Module, spec: ModelSpec, phase: Phase, freeze_bn: bool = False) -> None:
    """``model.train()``, except frozen body blocks, which stay in eval mode.

    With ``freeze_bn``, every body BatchNorm also stays in eval mode: it keeps normalising with
    the pretrained running statistics (its scale and shift still train). Switching a pretrained
    body to batch statistics of a small, unlike dataset wrecks its features in the first steps.
    """
    model.train()
    trainable = set(phase.blocks)
    for name, _ in body_blocks(model, spec):
        block = model.get_submodule(name)
        if name not in trainable:
            block.eval()
        elif freeze_bn:
            for m in block.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, Adam (weight decay added to the gradient, as torch's Adam) or SGD with momentum."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise GraftError(f"unknown optimizer '{cfg.optimizer}'")


def one_cycle(
    step: int, total: int, pct_start: float = 0.25, div: float = 25.0, final_div: float = 1e4
) -> float:
    """Learning-rate factor of the one-cycle policy (Smith; fastai's ``fit_one_cycle``).

    Cosine warm-up from ``1/div`` to 1 over the first ``pct_start`` of the steps, then cosine
    annealing to ``1/(div*final_div)``. Written out rather than torch's OneCycleLR, which divides
    by zero when a phase has only a few steps.
    """
    warm = max(1, round(pct_start * total))
    if step < warm:
        start, end, t = 1 / div, 1.0, step / warm
    else:
        start, end, t = 1.0, 1 / (div * final_div), min(1.0, (step - warm) / max(1, total - warm))
    return start + (end - start) * (1 - math.cos(math.pi * t)) / 2


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A schedule stepped once per batch: one-cycle, step (every ``step_size`` epochs) or cosine."""
    total = max(epochs * steps_per_epoch, 1)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: one_cycle(step, total))
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=max(cfg.step_size * steps_per_epoch, 1), gamma=cfg.gamma
        )
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    raise GraftError(f"unknown schedule '{cfg.schedule}'")
