"""Where a classifier succeeds and fails: per-image losses, confusions, top losses, prediction grids.

The counterpart of fastai's ``ClassificationInterpretation``. Build one with
:meth:`graft.Learner.interpret`; everything here works from the probabilities it holds, so
asking for several tables and plots runs the model once.

A multi-label model's interpretation holds multi-hot labels and per-class sigmoid probabilities;
its mistakes are missed and extra labels rather than confusions between two classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from graft.data.images import load_image
from graft.data.transforms import Preprocessing, ResizeCenterCrop
from graft.evaluation.metrics import EvalResult
from graft.evaluation.multilabel import MultiLabelResult, bce_per_image, label_set
from graft.inference.decision import Decision
from graft.infrastructure.errors import GraftError

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn (it costs ~0.5 s)
    from matplotlib.figure import Figure

RIGHT, WRONG = "#1a7f37", "#cf222e"


@dataclass
class Interpretation:
    """Predictions of a model on labeled images, with the views that explain them.

    Attributes:
        classes: Class names (column order of ``probs``).
        paths: The images that could be decoded, in evaluation order.
        labels: True class index of each image; multi-label: ``(n, classes)`` 0/1 rows.
        probs: ``(n, classes)`` predicted probabilities (multi-label: one sigmoid per class).
        preprocessing: The model's preprocessing (image grids show the crop the model saw).
        source: What was evaluated, e.g. ``hymenoptera (val)``.
        undecodable: Images that could not be decoded (left out).
        tta: Test-time augmentation views averaged (0: none).
        decision: How probabilities become answers (binary threshold, per-class thresholds,
            the calibration temperature already applied to ``probs``, the "unknown" rule).
        scores: Out-of-distribution score of each image (:mod:`graft.inference.ood`; higher is
            further from the training images), or None when the run stores no reference
            features.
    """

    classes: list[str]
    paths: list[Path]
    labels: np.ndarray
    probs: np.ndarray
    preprocessing: Preprocessing
    source: str = ""
    undecodable: int = 0
    tta: int = 0
    decision: Decision = field(default_factory=Decision)
    scores: np.ndarray | None = None

    @property
    def multi_label(self) -> bool:
        """Whether the model answers any number of classes per image."""
        return self.decision.multi_label

    @property
    def result(self) -> EvalResult | MultiLabelResult:
        """Loss, accuracy, per-class metrics and (single-label) the confusion matrix."""
        return EvalResult.from_predictions(
            self.probs, self.labels, self.classes, self.undecodable, decision=self.decision
        )

    @property
    def preds(self) -> np.ndarray:
        """The answer per image: its class index, or multi-label an ``(n, classes)`` bool row."""
        return self.decision.predicted(self.probs)

    @property
    def losses(self) -> np.ndarray:
        """Loss of each image: ``-log p(true class)``, or multi-label the mean binary
        cross-entropy of its classes."""
        if self.multi_label:
            return bce_per_image(self.probs, self.labels)
        picked = self.probs[np.arange(len(self.labels)), self.labels] if len(self.labels) else np.zeros(0)
        return -np.log(np.clip(picked, 1e-12, 1.0))

    def confusion(self, normalize: bool = False) -> np.ndarray:
        """Counts (rows: true class), or each row divided by its total with ``normalize``.

        Raises:
            GraftError: For a multi-label model (see :meth:`most_confused` for its mistakes).
        """
        if self.multi_label:
            raise GraftError("a multi-label model has no confusion matrix: see most_confused() and per_class")
        cm = self.result.confusion
        if not normalize:
            return cm
        totals = cm.sum(1, keepdims=True).astype(float)
        return np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)

    def most_confused(self, k: int = 10, min_count: int = 1) -> list[tuple[str, str, int]]:
        """The ``k`` most frequent mistakes as ``(true class, predicted class, count)``.

        Multi-label: ``(class, "missed" or "extra", count)``, images whose label was not answered
        (false negatives) or answered without being true (false positives)."""
        if self.multi_label:
            return self._label_errors(k, min_count)
        cm = self.result.confusion
        pairs = [
            (self.classes[i], self.classes[j], int(cm[i, j]))
            for i in range(len(self.classes))
            for j in range(len(self.classes))
            if i != j and cm[i, j] >= min_count
        ]
        return sorted(pairs, key=lambda p: -p[2])[:k]

    def _label_errors(self, k: int, min_count: int) -> list[tuple[str, str, int]]:
        truth, answered = self.labels > 0, self.preds
        missed, extra = (truth & ~answered).sum(0), (answered & ~truth).sum(0)
        counts = [(c, "missed", int(m)) for c, m in zip(self.classes, missed, strict=True)]
        counts += [(c, "extra", int(e)) for c, e in zip(self.classes, extra, strict=True)]
        return sorted((e for e in counts if e[2] >= min_count), key=lambda e: -e[2])[:k]

    def top_losses(self, k: int = 9) -> list[dict]:
        """The ``k`` images with the highest loss, highest first.

        Each row: ``path``, ``true``, ``pred``, ``prob`` (of the predicted class), ``true_prob``,
        ``loss`` and ``right``. Multi-label: ``true`` and ``pred`` are label sets (names separated
        by spaces, ``(none)`` when empty); ``worst`` is the class that costs the most loss, ``prob``
        its probability and ``true_prob`` whether it is true (1.0 or 0.0).
        """
        losses = self.losses
        order = np.argsort(-losses, kind="stable")[:k]
        return [self._row(int(i), float(losses[i])) for i in order]

    def sample(self, n: int = 12, seed: int = 0, per_class: int | None = None) -> list[dict]:
        """``n`` images picked at random (seeded), in evaluation order; rows as :meth:`top_losses`.

        With ``per_class``, up to that many images of each true class instead (``n`` is ignored).
        """
        rng = np.random.default_rng(seed)
        if per_class is None:
            picked = rng.choice(len(self.paths), size=min(n, len(self.paths)), replace=False)
        else:
            has = (lambda c: self.labels[:, c] > 0) if self.multi_label else (lambda c: self.labels == c)
            groups = [np.flatnonzero(has(c)) for c in range(len(self.classes))]
            picked = np.concatenate([[], *(rng.permutation(g)[:per_class] for g in groups)])
        chosen = np.unique(picked.astype(np.int64))  # multi-label: an image may be in several groups
        losses = self.losses
        return [self._row(int(i), float(losses[i])) for i in chosen]

    def _row(self, i: int, loss: float) -> dict:
        if self.multi_label:
            return self._multi_label_row(i, loss)
        pred = int(self.preds[i])
        return {
            "path": self.paths[i],
            "true": self.classes[int(self.labels[i])],
            "pred": self.classes[pred],
            "prob": float(self.probs[i, pred]),
            "true_prob": float(self.probs[i, int(self.labels[i])]),
            "loss": loss,
            "right": pred == int(self.labels[i]),
        }

    def _multi_label_row(self, i: int, loss: float) -> dict:
        truth, answered, p = self.labels[i] > 0, self.preds[i], self.probs[i]
        cost = -np.log(np.clip(np.where(truth, p, 1 - p), 1e-12, 1.0))
        worst = int(np.argmax(cost))
        return {
            "path": self.paths[i],
            "true": label_set(truth, self.classes),
            "pred": label_set(answered, self.classes),
            "prob": float(p[worst]),
            "true_prob": float(truth[worst]),
            "worst": self.classes[worst],
            "loss": loss,
            "right": bool((truth == answered).all()),
        }

    def plot_confusion(self, normalize: bool = False) -> Figure:
        """The confusion matrix as a heatmap (counts, or row-normalised); single-label only."""
        from graft.evaluation.plots import plot_confusion

        return plot_confusion(self.confusion(), self.classes, normalize)

    def plot_roc_pr(self) -> Figure:
        """ROC and precision-recall curves of the positive class (two-class models)."""
        from graft.evaluation.plots import plot_roc_pr

        if self.multi_label or len(self.classes) != 2:
            raise GraftError("ROC and PR curves of one positive class need a two-class, single-label model")
        pos = self.decision.positive
        threshold = self.decision.thresholds[0] if self.decision.thresholds else None
        return plot_roc_pr(self.probs[:, pos], self.labels == pos, self.classes[pos], threshold)

    def plot_pr_curves(self, max_curves: int = 12) -> Figure:
        """A precision-recall curve per class (one class against the rest, single-label)."""
        from graft.evaluation.plots import plot_pr_curves

        targets = (
            self.labels > 0 if self.multi_label else self.labels[:, None] == np.arange(len(self.classes))
        )
        return plot_pr_curves(self.probs, targets, self.classes, max_curves)

    def plot_top_losses(self, k: int = 9, cols: int = 3) -> Figure:
        """The highest-loss images, captioned ``true / predicted / probability / loss`` (multi-label:
        the true and the answered label sets, and the loss)."""
        from graft.evaluation.plots import plot_image_grid

        def caption(r: dict) -> str:
            if self.multi_label:
                return f"true: {r['true']}\npred: {r['pred']}\nloss={r['loss']:.2f}"
            return f"{r['true']} / {r['pred']}\np={r['prob']:.2f}  loss={r['loss']:.2f}"

        rows = self.top_losses(k)
        return plot_image_grid(
            [(self._image(r["path"]), caption(r), RIGHT if r["right"] else WRONG) for r in rows], cols
        )

    def plot_predictions(
        self, n: int = 12, cols: int = 4, seed: int = 0, per_class: int | None = None
    ) -> Figure:
        """A random (seeded) grid of images, captioned with prediction and truth; wrong ones in red.

        ``per_class``: that many images of each true class instead of ``n`` overall."""
        from graft.evaluation.plots import plot_image_grid

        def caption(r: dict) -> str:
            if self.multi_label:
                return f"pred: {r['pred']}\ntrue: {r['true']}"
            return f"pred {r['pred']} ({r['prob']:.2f})\ntrue {r['true']}"

        rows = self.sample(n, seed, per_class)
        return plot_image_grid(
            [(self._image(r["path"]), caption(r), RIGHT if r["right"] else WRONG) for r in rows], cols
        )

    def _image(self, path: Path) -> Image.Image:
        """The centre crop the model saw, before normalisation."""
        pre = self.preprocessing
        return ResizeCenterCrop(pre)(load_image(path, pre.resize_size))
