"""Metrics: callables ``(logits, targets) -> float`` over the val predictions of an epoch.

:func:`~graft.engine.trainer.fit` always records the val loss and :func:`accuracy`; each metric
passed in ``metrics={"name": fn}`` adds a ``val_<name>`` column to the history. ``logits`` is the
float ``(n, classes)`` tensor of the val split (on the CPU, in sample order), ``targets`` the
``(n,)`` long tensor of labels, or for multi-label data the ``(n, classes)`` 0/1 float tensor
(``val_acc`` is then the exact-match ratio: every class of the image right at 0.5).

Every run also records :func:`balanced_accuracy` and :func:`macro_f1` (single-label) or
:func:`multilabel_macro_f1`, :func:`micro_f1` and :func:`mean_average_precision` (multi-label):
:func:`standard_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The share of samples whose top class is the label (multi-label: whose every class is
    right at probability 0.5)."""
    return hits(logits, targets) / max(1, len(targets))


def hits(logits: torch.Tensor, targets: torch.Tensor) -> int:
    """Samples predicted right: top class = label, or (multi-label) every class right at 0.5."""
    if targets.dim() == 2:
        return int(((logits > 0) == (targets > 0.5)).all(1).sum().item())
    return int((logits.argmax(1) == targets).sum().item())


def balanced_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Recall averaged over the classes that occur in the targets (not fooled by a big class)."""
    predicted = logits.argmax(1)
    recalls = [
        ((predicted == c) & (targets == c)).sum().item() / (targets == c).sum().item()
        for c in targets.unique()
    ]
    return sum(recalls) / len(recalls) if recalls else 0.0


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


def _counts(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per class: true positives, false positives, false negatives at probability 0.5."""
    predicted, actual = logits > 0, targets > 0.5
    return (predicted & actual).sum(0), (predicted & ~actual).sum(0), (~predicted & actual).sum(0)


def multilabel_macro_f1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Multi-label: F1 at probability 0.5, averaged over the classes present or predicted."""
    tp, fp, fn = _counts(logits, targets)
    seen = (tp + fp + fn) > 0
    if not seen.any():
        return 1.0
    return (2 * tp / (2 * tp + fp + fn).clamp_min(1))[seen].float().mean().item()


def micro_f1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Multi-label: F1 at probability 0.5 over every (image, class) decision together."""
    tp, fp, fn = (t.sum().item() for t in _counts(logits, targets))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the precision-recall curve as scikit-learn's ``average_precision_score``
    computes it: the sum over thresholds of precision times the recall gained there."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], positive[order].double()
    tp = torch.cumsum(y, 0)
    last = torch.ones(len(s), dtype=torch.bool)  # the last of each run of tied scores
    last[:-1] = s[1:] != s[:-1]
    tp, k = tp[last], (torch.arange(1, len(s) + 1, dtype=torch.double))[last]
    recall_gain = torch.diff(tp, prepend=torch.zeros(1, dtype=torch.double)) / y.sum()
    return float((recall_gain * tp / k).sum())


def mean_average_precision(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Multi-label: :func:`average_precision` averaged over the classes with a positive example."""
    present = (targets > 0.5).any(0)
    aps = [average_precision(logits[:, c], targets[:, c] > 0.5) for c in present.nonzero().flatten().tolist()]
    return sum(aps) / len(aps) if aps else 0.0


def standard_metrics(multi_label: bool) -> dict[str, Metric]:
    """What every run records beside loss and accuracy (see the module's docstring)."""
    if multi_label:
        return {"macro_f1": multilabel_macro_f1, "micro_f1": micro_f1, "map": mean_average_precision}
    return {"bal_acc": balanced_accuracy, "macro_f1": macro_f1}


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
