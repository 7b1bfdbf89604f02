"""Predict with an exported ``model.onnx`` on onnxruntime: Pillow + NumPy preprocessing, no torch.

The preprocessing contract (input size, resize, interpolation, mean, std) and the class names
travel inside the ONNX file's metadata (key ``graft``), written by :func:`graft.export.exporters.export`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from graft.data.images import load_image
from graft.data.resize import resize_center_crop
from graft.data.selection import expand_paths
from graft.errors import GraftError

META_KEY = "graft"


class OnnxClassifier:
    """An exported classifier on onnxruntime.

    Args:
        path: The ``.onnx`` file written by ``graft export``.
        providers: onnxruntime execution providers (default: CUDA when available, else CPU).

    Raises:
        GraftError: If the file is not an ONNX model written by graft.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise GraftError(f"ONNX model not found: {path}")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), providers=list(providers))
        except Exception as e:  # onnxruntime raises its own types for a file that is not ONNX
            raise GraftError(f"{path} is not a readable ONNX model: {str(e).splitlines()[0]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if meta is None:
            raise GraftError(f"{path} has no graft metadata (export it with graft export)")
        try:
            self.meta = json.loads(meta)
            pre = self.meta["preprocessing"]
            self.classes: list[str] = list(self.meta["classes"])
            self.input_size = int(pre["input_size"])
            self.resize_size = round(self.input_size / float(pre["crop_pct"]))
            self.interpolation = str(pre["interpolation"])
            self.mean = np.array(pre["mean"], dtype=np.float32).reshape(3, 1, 1)
            self.std = np.array(pre["std"], dtype=np.float32).reshape(3, 1, 1)
        except (ValueError, KeyError, TypeError) as e:
            raise GraftError(f"{path}: malformed graft metadata ({e})") from None
        self.input_name = self.session.get_inputs()[0].name

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Resize, centre-crop and normalise one RGB image to a ``(3, H, W)`` float32 array, as
        the training pipeline's eval transform does."""
        crop = resize_center_crop(image, self.input_size, self.resize_size, self.interpolation)
        x = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return (x - self.mean) / self.std

    def predict_batch(self, images: Sequence[Image.Image], pad_to: int = 0) -> np.ndarray:
        """Class probabilities (float64) for decoded RGB images.

        ``pad_to`` runs the session on at least that many rows (copies of the last image) and
        drops the extra ones, so an image's result does not depend on how many it was batched
        with (kernels may differ with the batch size, as PyTorch's CPU convolutions do).
        """
        x = np.stack([self.preprocess(im) for im in images]).astype(np.float32)
        n = len(x)
        if n < pad_to:
            x = np.concatenate([x, np.repeat(x[-1:], pad_to - n, axis=0)])
        logits = self.session.run(None, {self.input_name: x})[0][:n].astype(np.float64)
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)

    def predict_probs(
        self, paths: str | Path | Sequence[str | Path], batch_size: int = 8
    ) -> tuple[list[Path], np.ndarray]:
        """Probabilities for image files and/or folders; undecodable files are warned about and
        left out. Returns ``(paths kept, probs)`` like :meth:`graft.Learner.predict_probs`."""
        files = expand_paths(paths)
        kept: list[Path] = []
        rows: list[np.ndarray] = []
        batch: list[tuple[Path, Image.Image]] = []

        def flush() -> None:
            if batch:
                rows.append(self.predict_batch([im for _, im in batch], pad_to=batch_size))
                kept.extend(p for p, _ in batch)
                batch.clear()

        for path in files:
            try:
                batch.append((path, load_image(path, self.resize_size)))
            except Exception:  # one bad file must not stop a run
                warnings.warn(f"skipped {path}: the image could not be decoded", stacklevel=2)
                continue
            if len(batch) == batch_size:
                flush()
        flush()
        probs = np.concatenate(rows) if rows else np.zeros((0, len(self.classes)))
        return kept, probs
