"""How well the unknown score tells the training distribution from outside images: what
``graft evaluate DATA --ood OTHER`` measures (NumPy only).

The in-distribution images are a labeled split the model did not train on; the outside images
are any folder of pictures of none of its classes. Each rate has a 95% bootstrap interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from graft.evaluation.bootstrap import (
    bootstrap_intervals,
    bootstrap_mean,
    interval_text,
    intervals_json,
    resampled_roc_auc,
    resampled_weights,
)
from graft.evaluation.calibration import coverage_curve
from graft.evaluation.curves import roc_auc
from graft.inference.decision import Reject


@dataclass
class OodResult:
    """The unknown score on in-distribution images (``inside``) and outside images (``outside``).

    Attributes:
        inside: Scores of the in-distribution images.
        outside: Scores of the outside images.
        correct: Whether each in-distribution image's class answer is right.
        reject: The rule measured (None: only the threshold-free numbers).
        auroc: Area under the ROC curve of the score telling outside from inside images.
        intervals: 95% bootstrap intervals of ``auroc`` and of the rates.
    """

    inside: np.ndarray
    outside: np.ndarray
    correct: np.ndarray
    reject: Reject | None
    auroc: float
    intervals: dict[str, tuple[float, float]]

    @classmethod
    def from_scores(
        cls, inside: np.ndarray, outside: np.ndarray, correct: np.ndarray, reject: Reject | None
    ) -> OodResult:
        """Measure the score (and the rule) on the two sets of scores."""
        inside, outside = np.asarray(inside, np.float64), np.asarray(outside, np.float64)
        scores = np.concatenate([inside, outside])
        is_out = np.r_[np.zeros(len(inside), bool), np.ones(len(outside), bool)]
        auc = roc_auc(scores, is_out) if len(inside) and len(outside) else math.nan
        area = resampled_roc_auc(scores, is_out)
        intervals = bootstrap_intervals(
            lambda idx: {"auroc": area(resampled_weights(idx, len(scores)))}, len(scores)
        )
        if reject is not None:
            intervals["outside_rejected"] = bootstrap_mean(reject.rejected(outside))
            intervals["inside_rejected"] = bootstrap_mean(reject.rejected(inside))
        return cls(inside, outside, np.asarray(correct, bool), reject, auc, intervals)

    @property
    def outside_rejected(self) -> float:
        """Share of outside images answered unknown (NaN without a rule or images)."""
        if self.reject is None or not len(self.outside):
            return math.nan
        return float(self.reject.rejected(self.outside).mean())

    @property
    def inside_rejected(self) -> float:
        """Share of in-distribution images answered unknown: the wrongly rejected."""
        if self.reject is None or not len(self.inside):
            return math.nan
        return float(self.reject.rejected(self.inside).mean())

    @property
    def accepted_accuracy(self) -> float:
        """Accuracy of the in-distribution images that are not rejected."""
        kept = (
            ~self.reject.rejected(self.inside) if self.reject is not None else np.ones(len(self.inside), bool)
        )
        return float(self.correct[kept].mean()) if kept.any() else math.nan

    def coverage(self) -> tuple[np.ndarray, np.ndarray]:
        """Coverage vs accuracy over inside and outside images together, answering the lowest
        scores first: an answered outside image counts as a wrong answer."""
        scores = np.concatenate([self.inside, self.outside])
        right = np.concatenate([self.correct, np.zeros(len(self.outside), bool)])
        return coverage_curve(-scores, right)

    def format(self) -> str:
        """The lines ``graft evaluate --ood`` prints."""
        iv = self.intervals
        lines = [
            f"unknown score on {len(self.inside)} in-distribution and {len(self.outside)} outside images: "
            f"AUROC {self.auroc:.4f}{interval_text(iv.get('auroc'), first=True)}"
        ]
        if self.reject is not None:
            r = self.reject
            out_n, in_n = int(r.rejected(self.outside).sum()), int(r.rejected(self.inside).sum())
            lines.append(
                f"at threshold {r.threshold:.4f} ({r.chosen_by or 'given'}): outside images answered "
                f"{r.label!r} {self.outside_rejected:.4f} ({out_n}/{len(self.outside)})"
                f"{interval_text(iv.get('outside_rejected'))}; in-distribution images wrongly answered "
                f"{r.label!r} {self.inside_rejected:.4f} ({in_n}/{len(self.inside)})"
                f"{interval_text(iv.get('inside_rejected'))}; "
                f"accuracy of the rest {self.accepted_accuracy:.4f}"
            )
        coverage, accuracy = self.coverage()
        points = [
            f"{c:.0%} {accuracy[max(0, math.ceil(c * len(coverage)) - 1)]:.3f}"
            for c in (0.25, 0.5, 0.75, 1.0)
        ]
        if len(coverage):
            lines.append(
                "accuracy over both sets by coverage (lowest scores answered first): " + ", ".join(points)
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready numbers (NaN as None)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        d: dict = {
            "auroc": num(self.auroc),
            "inside": len(self.inside),
            "outside": len(self.outside),
            "intervals": intervals_json(self.intervals),
        }
        if self.reject is not None:
            d.update(
                threshold=self.reject.threshold,
                outside_rejected=num(self.outside_rejected),
                inside_rejected=num(self.inside_rejected),
                accepted_accuracy=num(self.accepted_accuracy),
            )
        return d
