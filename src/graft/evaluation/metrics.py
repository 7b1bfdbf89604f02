"""Classification metrics: confusion matrix, per-class precision/recall/F1, balanced accuracy,
macro F1, ROC AUC and average precision for two classes, and their text form.

A multi-label model's metrics are a :class:`~graft.evaluation.multilabel.MultiLabelResult`, which
:meth:`EvalResult.from_predictions` returns when the decision says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

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
            return cls(math.nan, math.nan, 0, list(classes), per_class, cm, undecodable, area, area, decision)
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
        }
        if self.roc_auc is not None:
            d["roc_auc"] = None if math.isnan(self.roc_auc) else self.roc_auc
            d["average_precision"] = None if math.isnan(self.average_precision) else self.average_precision
            d["positive"] = self.classes[self.decision.positive]
            if self.decision.thresholds is not None:
                d["threshold"] = float(self.decision.thresholds[0])
        return d

    def headline(self) -> str:
        """One line: accuracy, balanced accuracy, macro F1, loss (and ROC AUC, AP for two classes)."""
        line = (
            f"accuracy {self.accuracy:.4f} ({self.correct}/{self.n})   balanced accuracy "
            f"{self.balanced_accuracy:.4f}   macro F1 {self.macro_f1:.4f}   loss {self.loss:.4f}"
        )
        if self.roc_auc is not None:
            line += f"   ROC AUC {self.roc_auc:.4f}   AP {self.average_precision:.4f}"
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
