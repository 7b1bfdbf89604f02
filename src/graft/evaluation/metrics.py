"""Classification metrics: confusion matrix, per-class precision/recall/F1, and their text form."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    """The outcome of evaluating a model on labeled images."""

    loss: float
    accuracy: float
    n: int
    classes: list[str]
    per_class: list[dict]
    confusion: np.ndarray
    undecodable: int = 0

    @classmethod
    def from_predictions(
        cls, probs: np.ndarray, labels: np.ndarray, classes: list[str], undecodable: int = 0
    ) -> EvalResult:
        """Metrics from class probabilities (n × C) and true labels (n)."""
        n = int(labels.shape[0])
        if n == 0:
            cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
            nan = float("nan")
            return cls(nan, nan, 0, classes, per_class_metrics(cm, classes), cm, undecodable)
        pred = probs.argmax(1)
        picked = np.clip(probs[np.arange(n), labels], 1e-12, 1.0)
        cm = confusion_matrix(labels, pred, len(classes))
        return cls(
            loss=float(-np.log(picked).mean()),
            accuracy=float((pred == labels).mean()),
            n=n,
            classes=list(classes),
            per_class=per_class_metrics(cm, classes),
            confusion=cm,
            undecodable=undecodable,
        )

    @property
    def correct(self) -> int:
        """Images whose top-1 prediction is their true class."""
        return int(np.trace(self.confusion))

    def to_dict(self) -> dict:
        """JSON-ready dict: accuracy, loss, n, classes, per_class, confusion (rows = true class)."""
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "n": self.n,
            "skipped": self.undecodable,  # the JSON key of graft evaluate --json, kept
            "classes": self.classes,
            "per_class": self.per_class,
            "confusion": self.confusion.tolist(),
        }

    def format(self, max_confusion_classes: int = 20) -> str:
        """A human-readable report: headline, per-class table and confusion matrix."""
        lines = [f"accuracy {self.accuracy:.4f} ({self.correct}/{self.n})   loss {self.loss:.4f}"]
        if self.undecodable:
            lines[0] += f"   skipped {self.undecodable}"
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
