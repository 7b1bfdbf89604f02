"""Classification metrics: confusion matrix, per-class precision/recall/F1, balanced accuracy,
macro F1, ROC AUC and average precision for two classes, and their text form.

Each of accuracy, balanced accuracy, macro F1 and ROC AUC comes with a 95% percentile-bootstrap
interval (:mod:`graft.evaluation.bootstrap`): the images are resampled jointly, so one resample
gives every metric's value on the same draw.

A multi-label model's metrics are a :class:`~graft.evaluation.multilabel.MultiLabelResult`, which
:meth:`EvalResult.from_predictions` returns when the decision says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from graft.evaluation.bootstrap import (
    BatchStatistic,
    bootstrap_intervals,
    interval_text,
    intervals_json,
    resampled_counts,
    resampled_roc_auc,
    resampled_weights,
)
from graft.evaluation.curves import average_precision, roc_auc
from graft.evaluation.multilabel import MultiLabelResult
from graft.inference.decision import Decision


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def per_class_metrics(cm: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision, recall, F1 and support per class (0 where undefined, as scikit-learn's zero_division=0)."""
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(0).astype(float)
    support = cm.sum(1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return [
        {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    ]


def class_count_scores(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro F1 from per-class counts, each ``(k, C)`` for ``k``
    draws: right answers, images of the class, images answered it (as :class:`EvalResult`'s, each
    NaN for a draw without images)."""
    tp, support, predicted = (np.asarray(a, dtype=np.float64) for a in (tp, support, predicted))
    total = support.sum(1)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)

    def mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        count = mask.sum(1)
        return np.where(count > 0, (values * mask).sum(1) / np.maximum(count, 1), np.nan)

    return {
        "accuracy": np.where(total > 0, tp.sum(1) / np.maximum(total, 1), np.nan),
        "balanced_accuracy": mean(recall, support > 0),
        "macro_f1": mean(f1, (support > 0) | (predicted > 0)),
    }


def resampled_scores(
    labels: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    scores: np.ndarray | None = None,
    positive: np.ndarray | None = None,
) -> BatchStatistic:
    """The statistic :func:`~graft.evaluation.bootstrap.bootstrap_intervals` resamples for a
    single-label result: accuracy, balanced accuracy, macro F1, and ROC AUC when ``scores`` and
    ``positive`` (the positive class's probability and whether it is the true one) are given.

    Args:
        labels: True class of each image.
        pred: Answered class of each image.
        num_classes: Classes.
        scores: Two classes: the positive class's probability per image.
        positive: Two classes: whether each image is of the positive class.

    Returns:
        A function of resampled image indices ``(k, n)`` giving each metric's ``k`` values.
    """
    labels, pred = np.asarray(labels, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    # The diagonal and margins of each resample's confusion matrix are all these metrics need:
    # three (k, C) counts rather than a (k, C, C) matrix, which 1,000 classes would make huge.
    hits = np.where(labels == pred, labels, num_classes)  # num_classes: a wrong answer
    area = resampled_roc_auc(scores, positive) if scores is not None and positive is not None else None

    def statistics(idx: np.ndarray) -> dict[str, np.ndarray]:
        values = class_count_scores(
            resampled_counts(idx, hits, num_classes + 1)[:, :num_classes],
            resampled_counts(idx, labels, num_classes),
            resampled_counts(idx, pred, num_classes),
        )
        if area is not None:
            values["roc_auc"] = area(resampled_weights(idx, len(labels)))
        return values

    return statistics


@dataclass
class EvalResult:
    """The outcome of evaluating a single-label model on labeled images.

    Attributes:
        loss: Cross-entropy of the true class, averaged over the images.
        accuracy: Images answered their true class (at the decision's threshold, if any).
        n: Images evaluated.
        classes: Class names.
        per_class: Precision, recall, F1 and support of each class.
        confusion: Counts, rows: true class, columns: answered class.
        undecodable: Images that could not be decoded (left out).
        roc_auc: Two classes: area under the ROC curve of the positive class's probability.
        average_precision: Two classes: area under its precision-recall curve.
        decision: How probabilities became answers (a binary threshold, or the top class).
        intervals: 95% bootstrap intervals ``(low, high)`` of ``accuracy``, ``balanced_accuracy``,
            ``macro_f1`` and (two classes) ``roc_auc``; empty when not computed.
    """

    loss: float
    accuracy: float
    n: int
    classes: list[str]
    per_class: list[dict]
    confusion: np.ndarray
    undecodable: int = 0
    roc_auc: float | None = None
    average_precision: float | None = None
    decision: Decision = field(default_factory=Decision)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    multi_label: ClassVar[bool] = False

    @classmethod
    def from_predictions(
        cls,
        probs: np.ndarray,
        labels: np.ndarray,
        classes: list[str],
        undecodable: int = 0,
        decision: Decision | None = None,
    ) -> EvalResult | MultiLabelResult:
        """Metrics from class probabilities (n × C) and true labels: class indices (n), or for a
        multi-label ``decision`` multi-hot rows (n × C), which give a :class:`MultiLabelResult`."""
        decision = decision or Decision()
        if decision.multi_label:
            return MultiLabelResult.from_predictions(probs, labels, classes, undecodable, decision)
        n = int(labels.shape[0])
        binary = len(classes) == 2
        if n == 0:
            cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
            area = math.nan if binary else None
            per_class = per_class_metrics(cm, classes)
            names = ["accuracy", "balanced_accuracy", "macro_f1"] + (["roc_auc"] if binary else [])
            undefined = {name: (math.nan, math.nan) for name in names}
            args = (math.nan, math.nan, 0, list(classes), per_class, cm, undecodable, area, area, decision)
            return cls(*args, intervals=undefined)
        pred = decision.predicted(probs)
        picked = np.clip(probs[np.arange(n), labels], 1e-12, 1.0)
        cm = confusion_matrix(labels, pred, len(classes))
        scores, positive = probs[:, decision.positive], labels == decision.positive
        return cls(
            loss=float(-np.log(picked).mean()),
            accuracy=float((pred == labels).mean()),
            n=n,
            classes=list(classes),
            per_class=per_class_metrics(cm, classes),
            confusion=cm,
            undecodable=undecodable,
            roc_auc=roc_auc(scores, positive) if binary else None,
            average_precision=average_precision(scores, positive) if binary else None,
            decision=decision,
            intervals=bootstrap_intervals(
                resampled_scores(labels, pred, len(classes), *((scores, positive) if binary else ())), n
            ),
        )

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes that have images (NaN without any): each class counts
        alike however many images it has, so always answering the big class scores low."""
        support = self.confusion.sum(1)
        if not support.any():
            return math.nan
        return float(np.mean(np.diag(self.confusion)[support > 0] / support[support > 0]))

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the classes that have images or were answered (as scikit-learn's
        ``f1_score(average="macro")``); NaN when there are none."""
        seen = (self.confusion.sum(1) > 0) | (self.confusion.sum(0) > 0)
        f1 = np.array([row["f1"] for row in self.per_class])
        return float(f1[seen].mean()) if seen.any() else math.nan

    @property
    def correct(self) -> int:
        """Images whose top-1 prediction is their true class."""
        return int(np.trace(self.confusion))

    def to_dict(self) -> dict:
        """JSON-ready dict: accuracy, balanced_accuracy, macro_f1, loss, n, classes, per_class,
        confusion (rows = true class); for two classes also roc_auc, average_precision, the
        positive class and the threshold when one is set. An undefined area (NaN) is None."""
        d = {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "loss": self.loss,
            "n": self.n,
            "skipped": self.undecodable,  # the JSON key of graft evaluate --json, kept
            "classes": self.classes,
            "per_class": self.per_class,
            "confusion": self.confusion.tolist(),
            "intervals": intervals_json(self.intervals),  # 95% bootstrap: [low, high] per metric
        }
        if self.roc_auc is not None:
            d["roc_auc"] = None if math.isnan(self.roc_auc) else self.roc_auc
            d["average_precision"] = None if math.isnan(self.average_precision) else self.average_precision
            d["positive"] = self.classes[self.decision.positive]
            if self.decision.thresholds is not None:
                d["threshold"] = float(self.decision.thresholds[0])
        return d

    def headline(self) -> str:
        """One line: accuracy, balanced accuracy, macro F1, loss (and ROC AUC, AP for two classes),
        each metric with its 95% interval in brackets when there is one, e.g.
        ``accuracy 0.9608 (147/153) [95% CI 0.928-0.987]   balanced accuracy 0.9605 [0.927-0.987]``."""
        ci = self.intervals.get
        line = (
            f"accuracy {self.accuracy:.4f} ({self.correct}/{self.n}){interval_text(ci('accuracy'), True)}"
            f"   balanced accuracy {self.balanced_accuracy:.4f}{interval_text(ci('balanced_accuracy'))}"
            f"   macro F1 {self.macro_f1:.4f}{interval_text(ci('macro_f1'))}   loss {self.loss:.4f}"
        )
        if self.roc_auc is not None:
            line += f"   ROC AUC {self.roc_auc:.4f}{interval_text(ci('roc_auc'))}"
            line += f"   AP {self.average_precision:.4f}"
        if self.undecodable:
            line += f"   skipped {self.undecodable}"
        return line

    def format(self, max_confusion_classes: int = 20) -> str:
        """A human-readable report: headline, per-class table and confusion matrix."""
        lines = [self.headline()]
        if self.roc_auc is not None:
            t, name = self.decision.thresholds, self.classes[self.decision.positive]
            rule = f"its probability is at or above {t[0]:.4f}" if t else "it is the more probable class"
            chosen = f" ({self.decision.chosen_by})" if t and self.decision.chosen_by else ""
            lines.append(f"positive class {name}: answered when {rule}{chosen}")
        width = max([len(c) for c in self.classes] + [5])
        lines += ["", f"{'class':<{width}}  precision  recall     f1  support"]
        for row in self.per_class:
            lines.append(
                f"{row['class']:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
                f"{row['f1']:5.3f}  {row['support']:7d}"
            )
        if len(self.classes) <= max_confusion_classes:
            cell = max(len(str(int(self.confusion.max(initial=0)))), 3)
            lines += ["", "confusion matrix (rows: true class, columns: predicted, in the order above)"]
            for c, row in zip(self.classes, self.confusion, strict=True):
                lines.append(f"{c:<{width}}  " + " ".join(f"{v:>{cell}d}" for v in row))
        else:
            lines += ["", f"(confusion matrix of {len(self.classes)} classes: see --json)"]
        return "\n".join(lines)
