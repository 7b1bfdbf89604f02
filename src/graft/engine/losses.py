"""The default losses of a run: cross-entropy (with inverse-frequency class weights under
``--balance weights``) or, for multi-label data, one binary cross-entropy per class."""

from __future__ import annotations

import torch
from torch import nn

from graft.data.dataset import ImageData
from graft.infrastructure.config import TrainConfig


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy with logits, averaged over images and classes; label smoothing moves
    each 0/1 target ``smoothing / 2`` toward the other."""

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(logits.dtype)
        if self.smoothing:
            targets = targets * (1 - self.smoothing) + self.smoothing / 2
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)


def class_weights(counts: list[int]) -> torch.Tensor:
    """Inverse-frequency weights ``n / (classes * count)``: each class weighs as much in the loss
    as if the classes were equal in size (a class with no image gets the largest weight)."""
    c = torch.tensor(counts, dtype=torch.float32)
    present = c > 0
    w = torch.zeros_like(c)
    w[present] = c[present].sum() / (present.sum() * c[present])
    w[~present] = w[present].max() if present.any() else 1.0
    return w


def default_losses(data: ImageData, cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """``(training loss, val loss)`` for ``data`` as a resolved ``cfg`` asks. The val loss is the
    plain one (no weights, no smoothing), so val losses compare across options."""
    if data.multi_label:
        return MultiLabelLoss(cfg.label_smoothing), MultiLabelLoss()
    weight = class_weights(data.class_counts("train")).to(device) if cfg.balance == "weights" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing), nn.CrossEntropyLoss()
