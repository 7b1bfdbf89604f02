"""How class probabilities become answers: softmax and the top class, a binary threshold, or
per-class thresholds on sigmoid outputs (multi-label). NumPy only: the PyTorch, ONNX and serving
paths share it, so they answer alike.

A :class:`Decision` is stored in a run's ``graft.json`` (key ``decision``) and in an export's
metadata. It is read back as a user's file is: every field is checked, and a tampered one is a
one-line :class:`~graft.infrastructure.errors.GraftError`.

Beside the thresholds it carries the softmax's calibration temperature and the rule that answers
"unknown" (:class:`Reject`: a threshold on the out-of-distribution score of
:mod:`graft.inference.ood`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from graft.infrastructure.errors import GraftError

DEFAULT_THRESHOLD = 0.5
UNKNOWN = "unknown"
# A temperature outside this range is not a calibration but a damaged file.
TEMPERATURE_RANGE = (0.01, 100.0)
SCORE_RANGE = (0.0, 2.0)  # a cosine distance


@dataclass(frozen=True)
class Reject:
    """When an image is answered "unknown": its out-of-distribution score (the cosine distance of
    its body features to the nearest training image's, :mod:`graft.inference.ood`) is above
    ``threshold``.

    Attributes:
        threshold: Scores above it are rejected.
        label: The answer given instead of a class.
        chosen_by: How the threshold was chosen (e.g. ``"accepts 95% of val (153 images)"``).
    """

    threshold: float
    label: str = UNKNOWN
    chosen_by: str = ""

    def rejected(self, scores: np.ndarray) -> np.ndarray:
        """A bool per score: past the threshold (a NaN score, no features, is never rejected)."""
        return np.asarray(scores, dtype=np.float64) > self.threshold


@dataclass(frozen=True)
class Decision:
    """What a model's outputs mean and how they are turned into labels.

    Attributes:
        multi_label: One sigmoid per class (any number of labels per image, none included)
            instead of a softmax over the classes (exactly one label).
        thresholds: Multi-label: one per class (a class is answered when its probability is at
            least its threshold; None: 0.5 each). Two classes: ``(t,)``, the probability of
            class ``positive`` from which it is answered (None: the top class).
        positive: The class a binary threshold is on.
        chosen_by: How the thresholds were chosen (e.g. ``"max F1 on val"``), for the record.
        temperature: Softmax logits are divided by it (temperature scaling, fitted on val:
            :func:`graft.evaluation.calibration.fit_temperature`); 1 leaves them as they are.
            Single-label only: multi-label calibration is its per-class thresholds.
        reject: When to answer "unknown" instead of a class (None: never).
    """

    multi_label: bool = False
    thresholds: tuple[float, ...] | None = None
    positive: int = 1
    chosen_by: str = ""
    temperature: float = 1.0
    reject: Reject | None = None

    # Outputs to probabilities.

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities (float64) from logits: a sigmoid per class, or a softmax over them."""
        z = np.asarray(logits, dtype=np.float64)
        if self.multi_label:
            return 0.5 * (1.0 + np.tanh(0.5 * z))  # the sigmoid, without overflow warnings
        z = z / self.temperature
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    @property
    def activation(self) -> str:
        """``"sigmoid"`` or ``"softmax"``."""
        return "sigmoid" if self.multi_label else "softmax"

    # Probabilities to labels.

    def class_thresholds(self, num_classes: int) -> np.ndarray:
        """Multi-label: the threshold of each class (0.5 where none was chosen)."""
        if self.thresholds is None:
            return np.full(num_classes, DEFAULT_THRESHOLD)
        return np.asarray(self.thresholds, dtype=np.float64)

    def predicted(self, probs: np.ndarray) -> np.ndarray:
        """Multi-label: an ``(n, C)`` bool array of the answered classes. Otherwise: the ``(n,)``
        answered class index (the top class, or for a binary threshold ``positive`` when its
        probability reaches it)."""
        probs = np.asarray(probs, dtype=np.float64)
        if self.multi_label:
            return probs >= self.class_thresholds(probs.shape[1])[None, :]
        if len(probs) == 0:
            return np.zeros(0, dtype=np.int64)
        top = probs.argmax(1)
        if self.thresholds is None or probs.shape[1] != 2:
            return top
        return np.where(probs[:, self.positive] >= self.thresholds[0], self.positive, 1 - self.positive)

    def answers(self, probs: np.ndarray) -> list[list[int]]:
        """The class indices answered for each row, most probable first (multi-label: every
        class at or above its threshold, possibly none; otherwise exactly one)."""
        probs = np.asarray(probs, dtype=np.float64)
        chosen = self.predicted(probs)
        if not self.multi_label:
            return [[int(c)] for c in chosen]
        out = []
        for row, mask in zip(probs, chosen, strict=True):
            idx = np.flatnonzero(mask)
            out.append([int(i) for i in idx[np.argsort(-row[idx], kind="stable")]])
        return out

    # The record.

    def to_dict(self, classes: Sequence[str]) -> dict:
        """JSON-ready: thresholds keyed by class name (multi-label) or with the positive class named."""
        d: dict = {"multi_label": self.multi_label, "activation": self.activation}
        if self.thresholds is not None:
            if self.multi_label:
                d["thresholds"] = {c: float(t) for c, t in zip(classes, self.thresholds, strict=True)}
            else:
                d["threshold"] = float(self.thresholds[0])
                d["positive"] = classes[self.positive]
        if self.chosen_by:
            d["chosen_by"] = self.chosen_by
        if self.temperature != 1.0:
            d["temperature"] = float(self.temperature)
        if self.reject is not None:
            r = self.reject
            d["reject"] = {"threshold": float(r.threshold), "label": r.label, "chosen_by": r.chosen_by}
        return d

    @classmethod
    def from_dict(cls, d: object, classes: Sequence[str], where: str = "the run") -> Decision:
        """Inverse of :meth:`to_dict`, checked field by field.

        Raises:
            GraftError: For anything a :meth:`to_dict` could not have written (a threshold that
                is not a number in [0, 1], a class the model does not have or lacks, a binary
                threshold on a model without two classes...).
        """
        if d is None:
            return cls()

        def bad(why: str) -> GraftError:
            return GraftError(f"the decision thresholds of {where} were modified or damaged: {why}")

        if not isinstance(d, dict) or not isinstance(d.get("multi_label", False), bool):
            raise bad("expected an object with a boolean 'multi_label'")
        trust = {"temperature": _temperature(d, bad), "reject": _reject(d.get("reject"), classes, bad)}
        return dataclasses.replace(cls._thresholds_from_dict(d, classes, bad), **trust)

    @classmethod
    def _thresholds_from_dict(cls, d: dict, classes: Sequence[str], bad) -> Decision:
        multi = d.get("multi_label", False)
        chosen_by = d.get("chosen_by", "")
        if not isinstance(chosen_by, str):
            raise bad("'chosen_by' is not text")
        if multi:
            raw = d.get("thresholds")
            if raw is None:
                return cls(True, None, chosen_by=chosen_by)
            if not isinstance(raw, dict) or set(raw) != set(classes):
                names = set(raw) if isinstance(raw, dict) else set()
                extra, lacking = sorted(names - set(classes)), sorted(set(classes) - names)
                what = f"unknown class {extra[0]!r}" if extra else f"no threshold for {lacking[:1]}"
                raise bad(f"'thresholds' must have one entry per class ({what})")
            values = tuple(_checked(raw[c], f"threshold of {c!r}", bad) for c in classes)
            return cls(True, values, 1, chosen_by)
        if "threshold" not in d:
            return cls(False, None, chosen_by=chosen_by)
        if len(classes) != 2:
            raise bad(f"a threshold needs two classes; the model has {len(classes)}")
        positive = d.get("positive")
        if positive not in classes:
            raise bad(f"positive class {positive!r} is not one of {list(classes)}")
        t = _checked(d["threshold"], "threshold", bad)
        return cls(False, (t,), list(classes).index(positive), chosen_by)


def _temperature(d: dict, bad) -> float:
    if "temperature" not in d:
        return 1.0
    t = d["temperature"]
    low, high = TEMPERATURE_RANGE
    if isinstance(t, bool) or not isinstance(t, int | float) or not (low <= t <= high):
        raise bad(f"temperature is {t!r}, not a number in [{low:g}, {high:g}]")
    if d.get("multi_label", False) and t != 1.0:
        raise bad("a multi-label model has no temperature (its thresholds are its calibration)")
    return float(t)


def _reject(r: object, classes: Sequence[str], bad) -> Reject | None:
    if r is None:
        return None
    if not isinstance(r, dict):
        raise bad("'reject' is not an object")
    t, label, chosen_by = r.get("threshold"), r.get("label", UNKNOWN), r.get("chosen_by", "")
    low, high = SCORE_RANGE
    if isinstance(t, bool) or not isinstance(t, int | float) or not (low <= t <= high):
        raise bad(f"the rejection threshold is {t!r}, not a distance in [{low:g}, {high:g}]")
    if not isinstance(label, str) or not label.strip() or len(label) > 100 or label in classes:
        raise bad(f"the rejection label {label!r} is empty, too long or one of the classes")
    if not isinstance(chosen_by, str):
        raise bad("the rejection's 'chosen_by' is not text")
    return Reject(float(t), label, chosen_by)


def _checked(value: object, what: str, bad) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(f"{what} is {value!r}, not a number")
    if not 0.0 <= float(value) <= 1.0:
        raise bad(f"{what} is {value}, outside [0, 1]")
    return float(value)


# Choosing thresholds on held-out predictions.


def best_f1_thresholds(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per class, the threshold that maximises F1 on ``(probs, targets)`` (multi-hot ``targets``).

    Candidates are midpoints between consecutive distinct probabilities (a threshold between two
    held-out scores generalises better than one on a score); ties keep the one closest to 0.5. A
    class with no positive example keeps 0.5.
    """
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets) > 0.5
    out = np.full(probs.shape[1], DEFAULT_THRESHOLD)
    for c in range(probs.shape[1]):
        p, y = probs[:, c], targets[:, c]
        if not y.any():
            continue
        values = np.unique(p)
        candidates = np.concatenate([[DEFAULT_THRESHOLD], (values[1:] + values[:-1]) / 2, values[:1]])
        predicted = p[None, :] >= candidates[:, None]
        tp = (predicted & y).sum(1)
        fp = (predicted & ~y).sum(1)
        fn = (~predicted & y).sum(1)
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        out[c] = float(candidates[best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]])
    return out


def threshold_for_recall(scores: np.ndarray, positive: np.ndarray, recall: float) -> float:
    """The highest threshold on ``scores`` at which at least ``recall`` of the ``positive``
    examples score at or above it.

    Raises:
        GraftError: Without positive examples.
    """
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(positive, dtype=bool)])[::-1]
    if len(pos) == 0:
        raise GraftError("no positive example in val: cannot choose a threshold for a target recall")
    need = max(1, math.ceil(recall * len(pos) - 1e-9))
    return float(pos[need - 1])


REJECT_CHOICES = ("auto", "off")


def rejection(decision: Decision, reject: str | float = "auto", *, scored: bool) -> Reject | None:
    """The rule that answers "unknown", as ``--reject`` asks: ``"auto"`` the run's stored rule,
    ``"off"`` none, a number (or its text) a threshold on the score instead of the stored one.
    ``scored``: whether the model computes the unknown score at all (a run saved before graft
    stored reference features does not: ``"auto"`` then warns that rejection is unavailable). A
    run without a stored rule (no val split, ``--unknown-accept 0``) answers no "unknown" on
    ``"auto"``, silently: its predictions still carry the score.

    Raises:
        GraftError: For another word, a number outside the score's range, or a number for a
            model without the score.
    """
    if isinstance(reject, str) and reject.strip().lower() in REJECT_CHOICES:
        if reject.strip().lower() == "off":
            return None
        if not scored:
            warnings.warn(
                "this model stores no reference features (saved by an older graft, or its "
                "model has no single linear head): no image is answered unknown",
                stacklevel=2,
            )
        return decision.reject if scored else None
    try:
        if isinstance(reject, bool):  # False would read as a threshold of 0: everything unknown
            raise TypeError
        value = float(reject)
    except (TypeError, ValueError):
        raise GraftError(f"--reject takes auto, off or a score threshold, not {reject!r}") from None
    low, high = SCORE_RANGE
    if not low <= value <= high:
        raise GraftError(f"--reject {reject}: a score threshold is a cosine distance in [{low:g}, {high:g}]")
    if not scored:
        raise GraftError("--reject VALUE needs a model that stores reference features; this one does not")
    label = decision.reject.label if decision.reject is not None else UNKNOWN
    return Reject(value, label, "--reject")
