"""Predict with an exported ``model.onnx`` on onnxruntime: Pillow + NumPy preprocessing, no torch.

The preprocessing contract (input size, resize, interpolation, mean, std), the class names and
the decision (softmax, or a sigmoid per class, and the thresholds) travel inside the ONNX file's
metadata (key ``graft``), written by :func:`graft.export.exporters.export`.
An ONNX file is shared like a run folder, so every field read from it is checked (type, range,
agreement with the graph's input and output shapes) before anything is allocated from it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from graft.data.images import load_image
from graft.data.resize import resize_center_crop
from graft.data.selection import expand_paths
from graft.inference.decision import Decision, Reject, rejection
from graft.inference.predictions import Prediction, decide
from graft.infrastructure import checks
from graft.infrastructure.errors import GraftError
from graft.infrastructure.text import plural

META_KEY = "graft"
# The metadata formats this version reads: 1 (a softmax and the top class), 2 (a decision
# with thresholds, or multi-label, which a graft that knows only 1 must refuse, not misread),
# and 3 (a calibration temperature, an unknown score output or rule, which 2 would ignore).
META_FORMATS = (1, 2, 3)
SCORE_OUTPUT = "unknown_score"


def meta_format(decision: Decision, scored: bool = False) -> int:
    """The metadata ``format`` of an export with ``decision``: 1 for a plain softmax, 2 for
    thresholds, 3 with a temperature, an unknown rule or the score output (``scored``)."""
    if scored or decision.temperature != 1.0 or decision.reject is not None:
        return 3
    return 1 if decision == Decision(chosen_by=decision.chosen_by) else 2


class OnnxClassifier:
    """An exported classifier on onnxruntime.

    Args:
        path: The ``.onnx`` file written by ``graft export``.
        providers: onnxruntime execution providers (default: CUDA when available, else CPU).

    Raises:
        GraftError: If the file is not an ONNX model written by graft, or its metadata is
            malformed, out of range or disagrees with the graph, or its thresholds were
            modified (one line, naming the field).

    Attributes:
        classes: The class names, in the order of the outputs.
        decision: How outputs become answers, as the Learner that was exported decides (its
            temperature and unknown rule included).
        scored: Whether the graph has the ``unknown_score`` output (a second output).
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
        text = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if text is None:
            raise GraftError(f"{path} has no graft metadata (export it with graft export)")
        try:
            self.meta, pre = _checked_meta(text, self.session)
        except GraftError as e:
            raise GraftError(f"{path}: graft metadata: {e}") from None
        self.classes: list[str] = list(self.meta["classes"])
        self.decision = _checked_decision(self.meta, self.classes, path)
        self.input_size = int(pre["input_size"])
        self.resize_size = round(self.input_size / pre["crop_pct"])
        self.interpolation = str(pre["interpolation"])
        self.mean = np.array(pre["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.array(pre["std"], dtype=np.float32).reshape(3, 1, 1)
        self.input_name = self.session.get_inputs()[0].name
        self.scored = _has_score(self.session, path)
        if self.decision.reject is not None and not self.scored:
            raise GraftError(f"{path}: graft metadata: an unknown rule without the {SCORE_OUTPUT} output")

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Resize, centre-crop and normalise one RGB image to a ``(3, H, W)`` float32 array, as
        the training pipeline's eval transform does."""
        crop = resize_center_crop(image, self.input_size, self.resize_size, self.interpolation)
        x = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return (x - self.mean) / self.std

    def predict_batch(self, images: Sequence[Image.Image], pad_to: int = 0) -> np.ndarray:
        """Class probabilities (float64) for decoded RGB images: a softmax (at the calibration
        temperature), or for a multi-label model a sigmoid per class; with the unknown score
        output, the score as one more, last column.

        ``pad_to`` runs the session on at least that many rows (copies of the last image) and
        drops the extra ones, so an image's result does not depend on how many it was batched
        with (kernels may differ with the batch size, as PyTorch's CPU convolutions do).
        """
        x = np.stack([self.preprocess(im) for im in images]).astype(np.float32)
        n = len(x)
        if n < pad_to:
            x = np.concatenate([x, np.repeat(x[-1:], pad_to - n, axis=0)])
        outputs = self.session.run(None, {self.input_name: x})
        probs = self.decision.activate(outputs[0][:n])
        if not self.scored:
            return probs
        return np.concatenate([probs, outputs[1][:n, None].astype(np.float64)], axis=1)

    def rejection(self, reject: str | float = "auto") -> Reject | None:
        """The rule that answers "unknown" (as :meth:`graft.Learner.rejection`)."""
        return rejection(self.decision, reject, scored=self.scored)

    def predict(
        self, paths: str | Path | Sequence[str | Path], k: int = 1, reject: str | float = "auto"
    ) -> list[Prediction]:
        """Predictions for image files and/or folders, answered as :meth:`graft.Learner.predict`
        answers them (top-``k``, or every label at or above its threshold; "unknown" past the
        rule ``reject`` picks)."""
        rule = self.rejection(reject)
        kept, probs, scores = self.predict_outputs(paths)
        return decide(probs, kept, self.classes, self.decision, k, scores, rule)

    def predict_probs(
        self, paths: str | Path | Sequence[str | Path], batch_size: int = 8
    ) -> tuple[list[Path], np.ndarray]:
        """Probabilities for image files and/or folders; undecodable files are warned about and
        left out. Returns ``(paths kept, probs)`` like :meth:`graft.Learner.predict_probs`."""
        kept, probs, _ = self.predict_outputs(paths, batch_size)
        return kept, probs

    def predict_outputs(
        self, paths: str | Path | Sequence[str | Path], batch_size: int = 8
    ) -> tuple[list[Path], np.ndarray, np.ndarray | None]:
        """:meth:`predict_probs` and each image's unknown score (None without the score output)."""
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
        out = np.concatenate(rows) if rows else np.zeros((0, len(self.classes) + self.scored))
        return (kept, out[:, :-1], out[:, -1]) if self.scored else (kept, out, None)


def _checked_meta(text: str, session: Any) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """The metadata, with its classes and preprocessing checked field by field and against the graph.

    Raises:
        GraftError: Naming the field (the caller prefixes the file).
    """
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: a deeply nested document
        raise GraftError(f"not valid JSON ({type(e).__name__})") from None
    meta = checks.record(meta, "metadata")
    for key in ("format", "classes", "preprocessing"):
        if key not in meta:
            raise GraftError(f"{key} is missing")
    checks.integer(meta, "format", META_FORMATS[0], META_FORMATS[-1], "metadata")
    pre = checks.preprocessing(meta["preprocessing"])
    width = _output_width(session)
    classes = checks.texts(meta, "classes", "metadata", max_items=width, unique=True)
    if len(classes) != width:
        raise GraftError(f"classes lists {plural(len(classes), 'name')} for a model with {width} outputs")
    _check_input(session, pre["input_size"])
    return meta, pre


def _checked_decision(meta: Mapping[str, Any], classes: list[str], path: Path) -> Decision:
    """The decision the metadata carries (format 1: a plain softmax).

    Raises:
        GraftError: A format-2 file without one, or one that :meth:`Decision.from_dict` refuses.
    """
    if meta["format"] >= 2 and "decision" not in meta:
        raise GraftError(f"{path}: graft metadata: format {meta['format']} needs a decision")
    return Decision.from_dict(meta.get("decision"), classes, where=str(path))


def _has_score(session: Any, path: Path) -> bool:
    """Whether the graph's second output is the unknown score, ``(batch,)``; no other second
    output is taken."""
    outputs = session.get_outputs()
    if len(outputs) == 1:
        return False
    if len(outputs) != 2 or outputs[1].name != SCORE_OUTPUT or len(outputs[1].shape) != 1:
        found = ", ".join(f"{o.name} {list(o.shape)}" for o in outputs)
        raise GraftError(f"{path}: the model's outputs are [{found}], not logits and {SCORE_OUTPUT}")
    return True


def _output_width(session: Any) -> int:
    """The class count of the graph's first output, which must be ``(batch, classes)`` with at
    least two classes (graft trains no one-class model: its softmax would always say 1.0)."""
    outputs = session.get_outputs()
    shape = list(outputs[0].shape) if outputs else []
    if len(shape) != 2 or not isinstance(shape[1], int) or shape[1] < 1:
        raise GraftError(f"the model's output has shape {shape}, not (batch, classes)")
    if shape[1] < 2:
        raise GraftError("the model has 1 output: a classifier needs at least two classes")
    return shape[1]


def _check_input(session: Any, size: int) -> None:
    """One float32 ``(batch, 3, H, W)`` input, whose H and W (where the graph fixes them) are
    ``size``: metadata that asks for another size would only fail in the first forward pass."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        found = ", ".join(f"{i.name} {i.type} {list(i.shape)}" for i in inputs)
        raise GraftError(f"the model's inputs are [{found}], not one float image (batch, 3, H, W)")
    _, channels, *sides = inputs[0].shape
    if isinstance(channels, int) and channels != 3:
        raise GraftError(f"the model's input has {channels} channels, not 3 (RGB)")
    fixed = [s for s in sides if isinstance(s, int)]
    if any(s != size for s in fixed):
        raise GraftError(
            f"preprocessing.input_size is {size}, but the model's input is {'x'.join(map(str, sides))}"
        )
