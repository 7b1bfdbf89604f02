"""Metrics: callables ``(logits, targets) -> float`` over the val predictions of an epoch.

:func:`~graft.engine.trainer.fit` always records the val loss and :func:`accuracy`; each metric
passed in ``metrics={"name": fn}`` adds a ``val_<name>`` column to the history. ``logits`` is the
float ``(n, classes)`` tensor of the val split (on the CPU, in sample order), ``targets`` the
``(n,)`` long tensor of labels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The share of samples whose top class is the label."""
    return (logits.argmax(1) == targets).float().mean().item()


def top_k_accuracy(k: int) -> Metric:
    """A metric: the share of samples whose label is among the ``k`` top classes."""

    def top_k(logits: torch.Tensor, targets: torch.Tensor) -> float:
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices
        return (top == targets[:, None]).any(1).float().mean().item()

    return top_k


def macro_f1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """F1 score averaged over the classes that occur in the targets or the predictions."""
    predicted = logits.argmax(1)
    scores = []
    for c in torch.cat([targets, predicted]).unique():
        tp = ((predicted == c) & (targets == c)).sum().item()
        fp = ((predicted == c) & (targets != c)).sum().item()
        fn = ((predicted != c) & (targets == c)).sum().item()
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def val_scores(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    metrics: dict[str, Metric],
) -> dict[str, float | str]:
    """``val_loss``, ``val_acc`` and ``val_<name>`` for each metric; ``""`` for each when there are
    no predictions (no val split), so every history row has the same columns."""
    names = ["val_loss", "val_acc", *(f"val_{name}" for name in metrics)]
    if not logits.numel():
        return dict.fromkeys(names, "")
    scores = {"val_loss": loss_fn(logits, targets).item(), "val_acc": accuracy(logits, targets)}
    scores.update({f"val_{name}": float(fn(logits, targets)) for name, fn in metrics.items()})
    return scores
