"""Metrics of a multi-label model: one sigmoid per class, any number of labels per image.

An image is answered every class whose probability reaches that class's threshold (see
:class:`~graft.inference.decision.Decision`). F1 is counted over those answers; average precision
ranks the probabilities themselves, so it does not depend on the thresholds.

Exact match, mAP, macro F1 and micro F1 each come with a 95% percentile-bootstrap interval
(:mod:`graft.evaluation.bootstrap`), the images resampled jointly.
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
    resampled_average_precision,
    resampled_weights,
)
from graft.evaluation.curves import average_precision
from graft.inference.decision import Decision
from graft.infrastructure.errors import GraftError
from graft.infrastructure.text import plural

_EPS = 1e-12


def _multi() -> Decision:
    return Decision(multi_label=True)


def bce_per_image(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each image, averaged over its classes."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(targets, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1) if p.size else np.zeros(len(p))


def label_set(row: np.ndarray, classes: list[str]) -> str:
    """The class names marked in a multi-hot (or bool) row, space separated; ``(none)`` if none."""
    names = [classes[i] for i in np.flatnonzero(np.asarray(row) > 0)]
    return " ".join(names) if names else "(none)"


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row means of ``values`` over ``mask`` (both ``(k, C)``); NaN for a row with nothing in it."""
    count = mask.sum(1)
    return np.where(count > 0, np.where(mask, values, 0).sum(1) / np.maximum(count, 1), np.nan)


def resampled_scores(probs: np.ndarray, truth: np.ndarray, answered: np.ndarray) -> BatchStatistic:
    """The statistic :func:`~graft.evaluation.bootstrap.bootstrap_intervals` resamples for a
    multi-label result: exact match (``accuracy``), ``map``, ``macro_f1`` and ``micro_f1``.

    Args:
        probs: Per-class probabilities, ``(n, C)``.
        truth: Whether each image has each class, ``(n, C)`` bool.
        answered: Whether each image was answered each class, ``(n, C)`` bool.

    Returns:
        A function of resampled image indices ``(k, n)`` giving each metric's ``k`` values.
    """
    n, c = truth.shape
    hits = answered & truth
    # Per image: exact match, right answers, wrong answers, then per class hits, answers, labels.
    # A resample's sums are its image counts times these: one matrix product per chunk.
    per_image = np.column_stack(
        [(answered == truth).all(1), hits.sum(1), (answered != truth).sum(1), hits, answered, truth]
    ).astype(np.float64)
    # A class without a positive image has no AP on any resample: left out.
    ap_of = [resampled_average_precision(probs[:, j], truth[:, j]) for j in range(c) if truth[:, j].any()]

    def statistics(idx: np.ndarray) -> dict[str, np.ndarray]:
        weights = resampled_weights(idx, n)
        sums = weights @ per_image
        exact, tp, wrong = sums[:, 0], sums[:, 1], sums[:, 2]
        tp_c, predicted, support = sums[:, 3 : 3 + c], sums[:, 3 + c : 3 + 2 * c], sums[:, 3 + 2 * c :]
        denom = predicted + support
        f1 = np.divide(2 * tp_c, denom, out=np.zeros_like(tp_c), where=denom > 0)  # = 2PR / (P + R)
        aps = [ap_of_class(weights) for ap_of_class in ap_of]
        ap = np.column_stack(aps) if aps else np.full((len(idx), 0), np.nan)
        return {
            "accuracy": exact / n,
            "map": _masked_mean(ap, ~np.isnan(ap)),
            "macro_f1": _masked_mean(f1, denom > 0),
            "micro_f1": np.where(2 * tp + wrong > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0),
        }

    return statistics


@dataclass
class MultiLabelResult:
    """The outcome of evaluating a multi-label model on labeled images.

    Attributes:
        loss: Binary cross-entropy, averaged over images and classes.
        accuracy: Exact-match ratio: images whose every class is answered right.
        n: Images evaluated.
        classes: Class names.
        per_class: Per class: precision, recall, F1, ``ap`` (None without positives), support
            (images that have the class), ``predicted`` (images answered it) and ``threshold``.
        micro_f1: F1 of all (image, class) answers pooled.
        macro_f1: Mean F1 over the classes that some image has or was answered.
        mean_ap: Mean average precision over the classes with at least one positive image.
        exact: Images whose every class is answered right.
        no_label: Images answered no class at all.
        none_true: Images that have none of the classes.
        undecodable: Images that could not be decoded (left out).
        decision: The thresholds the answers were taken at.
        intervals: 95% bootstrap intervals ``(low, high)`` of ``accuracy`` (exact match), ``map``,
            ``macro_f1`` and ``micro_f1``; empty when not computed.
    """

    loss: float
    accuracy: float
    n: int
    classes: list[str]
    per_class: list[dict]
    micro_f1: float
    macro_f1: float
    mean_ap: float
    exact: int = 0
    no_label: int = 0
    none_true: int = 0
    undecodable: int = 0
    decision: Decision = field(default_factory=_multi)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    multi_label: ClassVar[bool] = True

    @classmethod
    def from_predictions(
        cls,
        probs: np.ndarray,
        labels: np.ndarray,
        classes: list[str],
        undecodable: int = 0,
        decision: Decision | None = None,
    ) -> MultiLabelResult:
        """Metrics from per-class probabilities and multi-hot labels, both ``(n, classes)``.

        Raises:
            GraftError: When the labels are not one 0/1 column per class.
        """
        decision = decision or _multi()
        probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(classes))
        labels = np.asarray(labels)
        if labels.shape != probs.shape:
            raise GraftError(
                f"multi-label evaluation needs one 0/1 column per class: labels of shape "
                f"{labels.shape} for probabilities of shape {probs.shape}"
            )
        truth = labels > 0
        answered = decision.predicted(probs)
        per_class = _per_class(probs, truth, answered, classes, decision)
        tp = (answered & truth).sum()
        wrong = (answered != truth).sum()
        counted = [r["f1"] for r in per_class if r["support"] or r["predicted"]]
        aps = [r["ap"] for r in per_class if r["ap"] is not None]
        n = len(probs)
        exact = int((answered == truth).all(axis=1).sum())
        nothing = {name: (math.nan, math.nan) for name in ("accuracy", "map", "macro_f1", "micro_f1")}
        return cls(
            loss=float(bce_per_image(probs, truth).mean()) if n else math.nan,
            accuracy=exact / n if n else math.nan,
            n=n,
            classes=list(classes),
            per_class=per_class,
            micro_f1=float(2 * tp / (2 * tp + wrong)) if 2 * tp + wrong else (0.0 if n else math.nan),
            macro_f1=float(np.mean(counted)) if counted else math.nan,
            mean_ap=float(np.mean(aps)) if aps else math.nan,
            exact=exact,
            no_label=int((~answered.any(axis=1)).sum()),
            none_true=int((~truth.any(axis=1)).sum()),
            undecodable=undecodable,
            decision=decision,
            intervals=bootstrap_intervals(resampled_scores(probs, truth, answered), n) if n else nothing,
        )

    @property
    def correct(self) -> int:
        """Images whose every class is answered right (exact matches)."""
        return self.exact

    def to_dict(self) -> dict:
        """JSON-ready dict (``multi_label: true``); a value that is undefined (NaN) is None."""
        return {
            "multi_label": True,
            "accuracy": self.accuracy,
            "exact_match": self.accuracy,
            "loss": self.loss,
            "micro_f1": self.micro_f1,
            "macro_f1": self.macro_f1,
            "map": _nan_to_none(self.mean_ap),
            "n": self.n,
            "skipped": self.undecodable,  # the key graft evaluate --json uses for single-label too
            "no_label": self.no_label,
            "none_true": self.none_true,
            "classes": self.classes,
            "per_class": self.per_class,
            "decision": self.decision.to_dict(self.classes),
            "intervals": intervals_json(self.intervals),  # 95% bootstrap: [low, high] per metric
        }

    def format(self) -> str:
        """A human-readable report: headline (each metric with its 95% interval in brackets, e.g.
        ``exact match 0.2250 (18/80) [95% CI 0.138-0.325]   micro F1 0.6870 [0.631-0.741]``),
        per-class table and how many images were all right."""
        ci = self.intervals.get
        head = (
            f"exact match {self.accuracy:.4f} ({self.exact}/{self.n}){interval_text(ci('accuracy'), True)}"
            f"   micro F1 {self.micro_f1:.4f}{interval_text(ci('micro_f1'))}"
            f"   macro F1 {self.macro_f1:.4f}{interval_text(ci('macro_f1'))}"
            f"   mAP {self.mean_ap:.4f}{interval_text(ci('map'))}   loss {self.loss:.4f}"
        )
        if self.undecodable:
            head += f"   skipped {self.undecodable}"
        width = max([len(c) for c in self.classes] + [5])
        lines = [head, "", f"{'class':<{width}}  precision  recall     f1     AP  support  threshold"]
        for r in self.per_class:
            ap = "     -" if r["ap"] is None else f"{r['ap']:6.3f}"
            lines.append(
                f"{r['class']:<{width}}  {r['precision']:9.3f}  {r['recall']:6.3f}  {r['f1']:5.3f}  "
                f"{ap}  {r['support']:7d}  {r['threshold']:9.3f}"
            )
        chosen = f"; thresholds: {self.decision.chosen_by}" if self.decision.chosen_by else ""
        lines += [
            "",
            f"all classes right on {self.exact} of {plural(self.n, 'image')}; no label answered on "
            f"{self.no_label}; none of the classes true on {self.none_true}{chosen}",
        ]
        return "\n".join(lines)


def _per_class(
    probs: np.ndarray, truth: np.ndarray, answered: np.ndarray, classes: list[str], decision: Decision
) -> list[dict]:
    """Precision, recall, F1 (0 where undefined), AP and counts of each class."""
    tp = (answered & truth).sum(0).astype(float)
    predicted, support = answered.sum(0), truth.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    thresholds = decision.class_thresholds(len(classes))
    return [
        {
            "class": c,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "ap": _nan_to_none(average_precision(probs[:, i], truth[:, i])),
            "support": int(support[i]),
            "predicted": int(predicted[i]),
            "threshold": float(thresholds[i]),
        }
        for i, c in enumerate(classes)
    ]
