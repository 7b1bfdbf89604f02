"""The inference half of a :class:`~graft.learner.learner.Learner`: its network evaluated on
labeled images and run on image files or decoded images.

Batch size, workers, precision and test-time augmentation are arguments of each call (defaults:
the run's ``workers`` option, :attr:`Classifier.precision`); nothing here changes the learner.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from graft.data.dataset import ImageData, Sample
from graft.data.selection import eval_samples, expand_paths
from graft.data.transforms import Preprocessing, eval_transform
from graft.evaluation.interpret import Interpretation
from graft.evaluation.metrics import EvalResult
from graft.inference.decision import Decision, Reject, rejection
from graft.inference.ood import Joined, Scored
from graft.inference.predict import activate, sample_outputs
from graft.inference.predictions import Prediction, decide
from graft.infrastructure.config import INFERENCE_PRECISIONS, TrainConfig
from graft.infrastructure.errors import GraftError
from graft.infrastructure.runtime import autocast, channels_last, check_precision
from graft.models import ModelSpec
from graft.models.fuse import inference_model


class Classifier:
    """Evaluation and prediction for a learner (the base of :class:`~graft.learner.learner.Learner`,
    which sets these attributes).

    Attributes:
        model: The network, on ``device``.
        spec: What rebuilds it.
        preprocessing: The images it expects.
        classes: Its output classes, in order.
        device: Where it runs.
        data: Its dataset (None when loaded only to predict).
        split: The exact split it was trained on (``ImageData.to_record()``), for evaluation.
        config: Its options (``workers`` and ``cache_features`` are read here).
        decision: How its outputs become answers: a softmax and the top class (or a binary
            threshold), or a sigmoid per class and per-class thresholds (multi-label); the
            calibration temperature; when to answer "unknown".
        references: The training images' reference features of the unknown score
            (:mod:`graft.inference.ood`), or None (a run saved before graft stored them, or a
            model without a single linear head).
    """

    model: torch.nn.Module
    spec: ModelSpec
    preprocessing: Preprocessing
    classes: list[str]
    device: torch.device
    data: ImageData | None
    split: dict | None
    config: TrainConfig
    decision: Decision
    references: torch.Tensor | None
    _precision: str
    _fast: tuple[tuple, torch.nn.Module] | None
    _scored: tuple[torch.Tensor, torch.nn.Module] | None = None

    def evaluate(
        self,
        data: str | Path | ImageData | None = None,
        split: str | None = None,
        *,
        tta: bool | int = False,
        batch_size: int | None = None,
        workers: int | None = None,
        precision: str | None = None,
    ) -> EvalResult:
        """Evaluate on labeled images the model did not train on.

        Args:
            data: None for this learner's data; an :class:`ImageData`; a folder of class
                folders; or a dataset root (with ``split``, or the labeled test split if any, else val).
                For datasets split by fractions, the split saved at training time is reused.
            split: ``"test"`` or ``"val"`` (or ``"train"``).
            tta: Average test-time augmentation views: True or 2 (centre and mirror), or 4 (also
                the two end crops).
            batch_size: Images per forward pass (default: 32 on a CPU, more on a GPU); it changes
                speed and memory, not the answers (beyond the last float bits).
            workers: Data-loading worker processes (default: the run's ``workers`` option, else
                from the core count).
            precision: Arithmetic of the forward passes (default: :attr:`precision`).
        """
        return self.interpret(
            data, split, tta=tta, batch_size=batch_size, workers=workers, precision=precision
        ).result

    def interpret(
        self,
        data: str | Path | ImageData | None = None,
        split: str | None = None,
        *,
        tta: bool | int = False,
        batch_size: int | None = None,
        workers: int | None = None,
        precision: str | None = None,
    ) -> Interpretation:
        """Predictions on labeled images, with confusion, top losses and plots (see :meth:`evaluate`
        for the arguments)."""
        samples, source = eval_samples(
            data if data is not None else self.data, split, self.classes, self.split
        )
        out = sample_outputs(
            self.model,
            self.spec,
            self.preprocessing,
            samples,
            self.device,
            use_cache=self.config.cache_features,
            **self._inference_options(batch_size, workers, precision),
            tta=tta,
            **self._calibrated(),
        )
        probs, kept = out.probs, out.kept
        if probs.shape[0] == 0:
            probs = np.zeros((0, len(self.classes)))
        return Interpretation(
            classes=list(self.classes),
            paths=[samples[i].path for i in kept],
            labels=self._targets([samples[i].label for i in kept]),
            probs=probs,
            preprocessing=self.preprocessing,
            source=source,
            undecodable=len(samples) - len(kept),
            tta=2 if tta is True else int(tta),
            decision=self.decision,
            scores=out.scores,
        )

    def _calibrated(self) -> dict:
        """The activation, temperature and reference features every prediction path applies."""
        return {
            "activation": self.decision.activation,
            "temperature": self.decision.temperature,
            "references": self.references,
        }

    def _targets(self, labels: Sequence[int | tuple[int, ...] | None]) -> np.ndarray:
        """The samples' labels as an ``(n,)`` class index array, or for a multi-label model an
        ``(n, classes)`` 0/1 array (a row of zeros: none of the classes)."""
        if not self.multi_label:
            return np.array(labels, dtype=np.int64)
        hot = np.zeros((len(labels), len(self.classes)), dtype=np.int64)
        for row, label in enumerate(labels):
            hot[row, list(label if isinstance(label, tuple) else (label,))] = 1
        return hot

    def predict(
        self,
        paths: str | Path | Sequence[str | Path],
        k: int = 1,
        *,
        tta: bool | int = False,
        batch_size: int | None = None,
        workers: int | None = None,
        precision: str | None = None,
        reject: str | float = "auto",
    ) -> list[Prediction]:
        """Predictions for image files and/or folders (searched recursively).

        Single-label: the answered class (the top one, or the one the binary threshold picks),
        then the next most likely up to ``k`` classes. Multi-label: every class at or above its
        threshold, most probable first, possibly none (``k`` is ignored; see
        :class:`~graft.inference.predictions.Prediction`). Probabilities are calibrated (the
        run's temperature), and each prediction carries its unknown score.

        Undecodable files are warned about and left out. ``tta``, ``batch_size``, ``workers``,
        ``precision``: see :meth:`evaluate`. ``reject``: ``"auto"`` answers "unknown" past the
        run's threshold, ``"off"`` never, a number past that threshold instead
        (:func:`~graft.inference.decision.rejection`).
        """
        rule = self.rejection(reject)
        kept, probs, scores = self.predict_outputs(
            paths, tta=tta, batch_size=batch_size, workers=workers, precision=precision
        )
        return decide(probs, kept, self.classes, self.decision, k, scores, rule)

    def rejection(self, reject: str | float = "auto") -> Reject | None:
        """The rule that answers "unknown" for ``reject`` (see :meth:`predict`), warning when the
        run cannot score images."""
        return rejection(self.decision, reject, scored=self.references is not None)

    def predict_probs(
        self,
        paths: str | Path | Sequence[str | Path],
        *,
        tta: bool | int = False,
        batch_size: int | None = None,
        workers: int | None = None,
        precision: str | None = None,
    ) -> tuple[list[Path], np.ndarray]:
        """Full class probabilities (columns in ``self.classes`` order) for the decodable images
        (the other arguments: see :meth:`evaluate`): a softmax over the classes, or for a
        multi-label model one sigmoid per class (rows need not sum to 1).

        Returns:
            ``(paths, probs)``: the images that could be decoded, and one row of probabilities each.
        """
        kept, probs, _ = self.predict_outputs(
            paths, tta=tta, batch_size=batch_size, workers=workers, precision=precision
        )
        return kept, probs

    def predict_outputs(
        self,
        paths: str | Path | Sequence[str | Path],
        *,
        tta: bool | int = False,
        batch_size: int | None = None,
        workers: int | None = None,
        precision: str | None = None,
    ) -> tuple[list[Path], np.ndarray, np.ndarray | None]:
        """:meth:`predict_probs` and each image's unknown score (None without reference features)."""
        samples = [Sample(p, None) for p in expand_paths(paths)]
        out = sample_outputs(
            self.model,
            self.spec,
            self.preprocessing,
            samples,
            self.device,
            fast=self._scored_model(),
            **self._inference_options(batch_size, workers, precision),
            tta=tta,
            **self._calibrated(),
        )
        return [samples[i].path for i in out.kept], out.probs, out.scores

    def _inference_options(self, batch_size: int | None, workers: int | None, precision: str | None) -> dict:
        """The forward passes' batch size, workers and precision: the arguments, checked, or this
        learner's defaults."""
        if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
            raise GraftError(f"the batch size must be a whole number of at least 1, not {batch_size!r}")
        if workers is not None and not (isinstance(workers, int) and workers >= 0):
            raise GraftError(f"workers must be a whole number of at least 0, not {workers!r}")
        return {
            "batch_size": batch_size,
            "workers": self.config.workers if workers is None else workers,
            "precision": self.precision
            if precision is None
            else check_precision(precision, self.device, INFERENCE_PRECISIONS),
        }

    def predict_images(self, images: Sequence[Image.Image | torch.Tensor]) -> np.ndarray:
        """Calibrated class probabilities (rows in input order) for decoded RGB images held in
        memory, as a server receives them; preprocessing as in :meth:`predict_probs`, in one
        batch. A tensor is taken as already preprocessed (the eval transform's output)."""
        out = self.predict_images_scored(images)
        return out if self.references is None else out[:, :-1]

    @torch.inference_mode()
    def predict_images_scored(self, images: Sequence[Image.Image | torch.Tensor]) -> np.ndarray:
        """:meth:`predict_images` with each image's unknown score as one more, last column (no
        extra column without reference features)."""
        scored = self.references is not None
        if not images:
            return np.zeros((0, len(self.classes) + scored))
        transform = eval_transform(self.preprocessing)
        x = torch.stack([im if isinstance(im, torch.Tensor) else transform(im) for im in images])
        x = channels_last(x.to(self.device))
        with autocast(self.device, self.precision):
            out = self._scored_model()(x).float()
        logits = out[:, :-1] if scored else out
        d = self.decision
        probs = activate(logits / d.temperature if d.activation == "softmax" else logits, d.activation)
        return np.concatenate([probs, out[:, -1:].double().cpu().numpy()], axis=1) if scored else probs

    def _inference_model(self) -> torch.nn.Module:
        """The BatchNorm-folded copy used for prediction, rebuilt only when the weights changed
        (every in-place update, e.g. an optimizer step or ``load_state_dict``, bumps a tensor's
        version counter)."""
        state = self.model.state_dict()
        stamp = tuple((t.data_ptr(), t._version) for t in state.values())
        if self._fast is None or self._fast[0] != stamp:
            self._fast = (stamp, inference_model(self.model, self.preprocessing.input_size, self.device))
            self._scored = None
        return self._fast[1]

    def _scored_model(self) -> torch.nn.Module:
        """:meth:`_inference_model` with the unknown score as one more output column."""
        fast = self._inference_model()
        if self.references is None:
            return fast
        if self._scored is None or self._scored[0] is not self.references:
            self._scored = (self.references, Joined(Scored(fast, self.spec, self.references.to(self.device))))
        return self._scored[1]

    @property
    def scored(self) -> bool:
        """Whether its predictions carry the unknown score (the run stores reference features)."""
        return self.references is not None

    @property
    def multi_label(self) -> bool:
        """Whether the model answers any number of classes per image (one sigmoid per class)."""
        return self.decision.multi_label

    @property
    def precision(self) -> str:
        """Arithmetic of evaluation and prediction by default: ``fp32`` (the numbers agree with
        the val metrics of training, with the other commands and with the export, on any machine),
        or ``bf16``/``fp16``, faster where the hardware has them, by about 1e-2 in probability."""
        return self._precision

    @precision.setter
    def precision(self, name: str) -> None:
        self._precision = check_precision(name, self.device, INFERENCE_PRECISIONS)
