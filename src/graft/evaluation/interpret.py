"""Where a classifier succeeds and fails: per-image losses, confusions, top losses, prediction grids.

The counterpart of fastai's ``ClassificationInterpretation``. Build one with
:meth:`graft.Learner.interpret`; everything here works from the probabilities it holds, so
asking for several tables and plots runs the model once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from graft.data.images import load_image
from graft.data.transforms import Preprocessing, ResizeCenterCrop
from graft.evaluation.metrics import EvalResult

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn (it costs ~0.5 s)
    from matplotlib.figure import Figure

RIGHT, WRONG = "#1a7f37", "#cf222e"


@dataclass
class Interpretation:
    """Predictions of a model on labeled images, with the views that explain them.

    Attributes:
        classes: Class names (column order of ``probs``).
        paths: The images that could be decoded, in evaluation order.
        labels: True class index of each image.
        probs: ``(n, classes)`` predicted probabilities.
        preprocessing: The model's preprocessing (image grids show the crop the model saw).
        source: What was evaluated, e.g. ``hymenoptera (val)``.
        undecodable: Images that could not be decoded (left out).
        tta: Test-time augmentation views averaged (0: none).
    """

    classes: list[str]
    paths: list[Path]
    labels: np.ndarray
    probs: np.ndarray
    preprocessing: Preprocessing
    source: str = ""
    undecodable: int = 0
    tta: int = 0

    @property
    def result(self) -> EvalResult:
        """Loss, accuracy, per-class metrics and confusion matrix."""
        return EvalResult.from_predictions(self.probs, self.labels, self.classes, self.undecodable)

    @property
    def preds(self) -> np.ndarray:
        """Predicted class index per image."""
        return self.probs.argmax(1) if len(self.probs) else np.zeros(0, dtype=np.int64)

    @property
    def losses(self) -> np.ndarray:
        """Cross-entropy of each image: ``-log p(true class)``."""
        picked = self.probs[np.arange(len(self.labels)), self.labels] if len(self.labels) else np.zeros(0)
        return -np.log(np.clip(picked, 1e-12, 1.0))

    def confusion(self, normalize: bool = False) -> np.ndarray:
        """Counts (rows: true class), or each row divided by its total with ``normalize``."""
        cm = self.result.confusion
        if not normalize:
            return cm
        totals = cm.sum(1, keepdims=True).astype(float)
        return np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)

    def most_confused(self, k: int = 10, min_count: int = 1) -> list[tuple[str, str, int]]:
        """The ``k`` most frequent mistakes as ``(true class, predicted class, count)``."""
        cm = self.result.confusion
        pairs = [
            (self.classes[i], self.classes[j], int(cm[i, j]))
            for i in range(len(self.classes))
            for j in range(len(self.classes))
            if i != j and cm[i, j] >= min_count
        ]
        return sorted(pairs, key=lambda p: -p[2])[:k]

    def top_losses(self, k: int = 9) -> list[dict]:
        """The ``k`` images with the highest loss, highest first.

        Each row: ``path``, ``true``, ``pred``, ``prob`` (of the predicted class), ``true_prob``, ``loss``.
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
            groups = [np.flatnonzero(self.labels == c) for c in range(len(self.classes))]
            picked = np.concatenate([[], *(rng.permutation(g)[:per_class] for g in groups)])
        chosen = np.sort(picked.astype(np.int64))
        losses = self.losses
        return [self._row(int(i), float(losses[i])) for i in chosen]

    def _row(self, i: int, loss: float) -> dict:
        pred = int(self.preds[i])
        return {
            "path": self.paths[i],
            "true": self.classes[int(self.labels[i])],
            "pred": self.classes[pred],
            "prob": float(self.probs[i, pred]),
            "true_prob": float(self.probs[i, int(self.labels[i])]),
            "loss": loss,
        }

    def plot_confusion(self, normalize: bool = False) -> Figure:
        """The confusion matrix as a heatmap (counts, or row-normalised)."""
        from graft.evaluation.plots import plot_confusion

        return plot_confusion(self.result.confusion, self.classes, normalize)

    def plot_top_losses(self, k: int = 9, cols: int = 3) -> Figure:
        """The highest-loss images, captioned ``true / predicted / probability / loss``."""
        from graft.evaluation.plots import plot_image_grid

        rows = self.top_losses(k)
        return plot_image_grid(
            [
                (
                    self._image(r["path"]),
                    f"{r['true']} / {r['pred']}\np={r['prob']:.2f}  loss={r['loss']:.2f}",
                    WRONG if r["true"] != r["pred"] else RIGHT,
                )
                for r in rows
            ],
            cols,
        )

    def plot_predictions(
        self, n: int = 12, cols: int = 4, seed: int = 0, per_class: int | None = None
    ) -> Figure:
        """A random (seeded) grid of images, captioned with prediction and truth; wrong ones in red.

        ``per_class``: that many images of each true class instead of ``n`` overall."""
        from graft.evaluation.plots import plot_image_grid

        return plot_image_grid(
            [
                (
                    self._image(r["path"]),
                    f"pred {r['pred']} ({r['prob']:.2f})\ntrue {r['true']}",
                    WRONG if r["true"] != r["pred"] else RIGHT,
                )
                for r in self.sample(n, seed, per_class)
            ],
            cols,
        )

    def _image(self, path: Path) -> Image.Image:
        """The centre crop the model saw, before normalisation."""
        pre = self.preprocessing
        return ResizeCenterCrop(pre)(load_image(path, pre.resize_size))
