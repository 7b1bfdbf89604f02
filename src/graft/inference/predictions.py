"""Prediction rows: the top-k classes of each image (NumPy only, shared by the PyTorch and ONNX paths)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Prediction:
    """Top-k classes of one image."""

    path: Path
    labels: list[str]
    probs: list[float]

    @property
    def label(self) -> str:
        """The most likely class."""
        return self.labels[0]

    @property
    def prob(self) -> float:
        """Its probability."""
        return self.probs[0]


def top_k(probs: np.ndarray, paths: Sequence[Path], classes: list[str], k: int) -> list[Prediction]:
    """One :class:`Prediction` per row of ``probs`` (the image at ``paths[row]``), with the ``k``
    most likely classes."""
    k = max(1, min(k, len(classes)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        Prediction(Path(path), [classes[j] for j in row], [float(probs[r, j]) for j in row])
        for r, (path, row) in enumerate(zip(paths, order, strict=True))
    ]
