"""What a trained model's confidence is worth, measured on its val split after training: the
softmax temperature that calibrates it, the training images' reference features of the unknown
score, and the score threshold past which an image is answered "unknown".

One forward pass over train and val in fp32 gives every number (none at all when the body never
trained: the features are in the feature cache already).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from graft.data.dataset import ImageData
from graft.data.transforms import Preprocessing
from graft.evaluation.bootstrap import intervals_json
from graft.evaluation.calibration import TEMPERATURE_BOUNDS, expected_calibration_error, fit_temperature
from graft.evaluation.metrics import EvalResult
from graft.features.cache import FeatureCache, default_cache_root
from graft.features.extract import body_key, extract_features, feature_head, head_logits
from graft.features.views import eval_view
from graft.inference.decision import Decision, Reject
from graft.inference.ood import SCORE_NAME, accept_threshold, choose_references, distances, reference_sample
from graft.infrastructure.config import ResolvedConfig
from graft.infrastructure.text import plural
from graft.models import ModelSpec

# Fewer val images than this say too little about a temperature (it would fit their noise).
MIN_CALIBRATION_IMAGES = 20


@dataclass
class Trust:
    """What :func:`measure_trust` found.

    Attributes:
        temperature: The softmax temperature (1.0: not calibrated).
        reject: The "unknown" rule chosen on val (None without val, or ``unknown_accept`` 0).
        references: The reference features to store with the run (None: no single linear head).
        metrics: ``val_ece_uncalibrated``, ``val_ece``, ``temperature``, ``val_loss_calibrated``,
            ``unknown_threshold``,
            ``val_unknown_rate`` and ``val_intervals`` (95% bootstrap intervals of the val
            metrics), for ``graft.json``.
        lines: What to print about it.
    """

    temperature: float = 1.0
    reject: Reject | None = None
    references: torch.Tensor | None = None
    metrics: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def applied(self, decision: Decision) -> Decision:
        """``decision`` with this temperature and rule."""
        return dataclasses.replace(decision, temperature=self.temperature, reject=self.reject)


def measure_trust(
    model: torch.nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    data: ImageData,
    cfg: ResolvedConfig,
    device: torch.device,
) -> Trust:
    """Temperature, reference features and unknown threshold of a trained model.

    Models without a single linear head (inception, squeezenet) get neither the score nor,
    since their val logits are not at hand here, a temperature: the returned lines say so.
    """
    head = feature_head(model, spec)
    if head is None:
        return Trust(lines=[f"trust: {spec.arch} has no single linear head: no calibration or unknown score"])
    single = not data.multi_label
    train, val = data.splits.get("train", []), data.splits.get("val", [])
    labels = np.array([sample.label for sample in train]) if single else None
    train = [train[i] for i in reference_sample(len(train), labels, seed=cfg.seed)]
    key = body_key(model, spec, pre, "fp32")
    cache = FeatureCache(default_cache_root(), key) if cfg.cache_features else None
    jobs = [(train, [eval_view(pre)]), (val, [eval_view(pre)])]
    tr, va = extract_features(model, spec, pre, jobs, device, cache=cache, workers=cfg.workers, desc="trust")
    refs = choose_references(tr.vectors[:, 0])  # already sampled
    trust = Trust(references=refs)
    trust.lines.append(f"unknown score: {SCORE_NAME}, {plural(len(refs), 'reference image')} stored")
    if not len(va.index):
        trust.lines.append(
            "no val split: no calibration, and no unknown threshold (predict --reject VALUE sets one)"
        )
        return trust
    vectors = va.vectors[:, 0]
    logits = head_logits(head, vectors, device).double().numpy()
    targets = _targets([val[i].label for i in va.index], logits.shape[1], single)
    if single:
        _calibrate(trust, logits, targets, cfg.calibrate)
    trust.metrics["val_intervals"] = _intervals(logits, targets, data, trust.temperature)
    if cfg.unknown_accept > 0:
        _threshold(trust, distances(vectors, refs).double().numpy(), cfg)
    return trust


def _calibrate(trust: Trust, logits: np.ndarray, labels: np.ndarray, wanted: bool) -> None:
    """Fit the temperature (when wanted and val is large enough) and record the ECE either way."""
    before = expected_calibration_error(_softmax(logits), labels)
    trust.metrics["val_ece_uncalibrated"] = before
    if not wanted:
        trust.lines.append(f"calibration: off (--no-calibrate); val ECE {before:.4f}")
        return
    if len(labels) < MIN_CALIBRATION_IMAGES:
        trust.lines.append(
            f"calibration: skipped ({plural(len(labels), 'val image')}, fewer than {MIN_CALIBRATION_IMAGES})"
        )
        return
    t = fit_temperature(logits, labels)
    if not TEMPERATURE_BOUNDS[0] * 1.001 < t < TEMPERATURE_BOUNDS[1] * 0.999:
        # Val holds (next to) no error: the likelihood only grows as the softmax sharpens.
        trust.lines.append(
            f"calibration: skipped (the fit ran to its bound, {t:.3g}: val has too few errors)"
        )
        return
    calibrated = _softmax(logits / t)
    after = expected_calibration_error(calibrated, labels)
    trust.temperature = t
    # graft evaluate's val loss from now on: the calibrated probabilities'.
    loss = float(-np.log(np.clip(calibrated[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())
    trust.metrics.update(temperature=t, val_ece=after, val_loss_calibrated=loss)
    trust.lines.append(
        f"calibration: temperature {t:.3f} on {plural(len(labels), 'val image')}: "
        f"expected calibration error {before:.4f} -> {after:.4f}"
    )


def _threshold(trust: Trust, scores: np.ndarray, cfg: ResolvedConfig) -> None:
    t = accept_threshold(scores, cfg.unknown_accept)
    rejected = int((scores > t).sum())
    chosen_by = f"accepts {cfg.unknown_accept:.0%} of val ({plural(len(scores), 'image')})"
    trust.reject = Reject(t, cfg.unknown_label, chosen_by)
    trust.metrics.update(unknown_threshold=t, val_unknown_rate=rejected / len(scores))
    trust.lines.append(
        f"unknown: answered past score {t:.4f}, which {chosen_by}; "
        f"{rejected} val images are answered {cfg.unknown_label!r}"
    )


def _targets(labels: list, classes: int, single: bool) -> np.ndarray:
    """Class indices, or multi-hot rows for a multi-label model."""
    if single:
        return np.array(labels, dtype=np.int64)
    hot = np.zeros((len(labels), classes), dtype=np.int64)
    for row, label in enumerate(labels):
        hot[row, list(label if isinstance(label, tuple) else (label,))] = 1
    return hot


def _intervals(logits: np.ndarray, targets: np.ndarray, data: ImageData, temperature: float) -> dict:
    """95% bootstrap intervals of the val metrics the training log prints (multi-label: at 0.5)."""
    decision = Decision(multi_label=data.multi_label, temperature=temperature)
    result = EvalResult.from_predictions(
        decision.activate(logits), targets, list(data.classes), decision=decision
    )
    return intervals_json(result.intervals)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
