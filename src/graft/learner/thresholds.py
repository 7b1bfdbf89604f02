"""Choosing a trained model's decision on its val split: per-class thresholds (multi-label), or
a threshold on the positive class of a two-class model (``--threshold``, ``--target-recall``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from graft.data.dataset import ImageData
from graft.evaluation.metrics import EvalResult
from graft.inference.decision import Decision, best_f1_thresholds, threshold_for_recall
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.errors import GraftError

if TYPE_CHECKING:
    from graft.learner.learner import Learner


def check_decision_options(cfg: TrainConfig, data: ImageData) -> None:
    """Refuse, before any training, threshold options the data cannot take.

    Raises:
        GraftError: ``--threshold``/``--target-recall``/``--positive`` on single-label data
            without exactly two classes, ``--target-recall`` on multi-label data, an unknown
            ``--positive`` class, or an ``--unknown-label`` that names a class.
    """
    two = len(data.classes) == 2 and not data.multi_label
    if cfg.target_recall is not None and not two:
        raise GraftError("--target-recall needs single-label data with two classes")
    if cfg.threshold is not None and not (two or data.multi_label):
        raise GraftError(
            f"--threshold needs two classes or multi-label data; this data has {len(data.classes)} classes"
        )
    if cfg.positive is not None and (not two or cfg.positive not in data.classes):
        raise GraftError(f"--positive must name one of two classes: {', '.join(data.classes)}")
    if cfg.unknown_label in data.classes:
        raise GraftError(f"--unknown-label {cfg.unknown_label!r} is one of the classes: choose another name")


def positive_class(cfg: TrainConfig, data: ImageData) -> int:
    """The positive class of a two-class model: ``--positive``, else the one with fewer training
    images (the rarer class is the one a recall target is usually about; ties: the second)."""
    if cfg.positive is not None:
        return data.classes.index(cfg.positive)
    counts = data.class_counts("train")
    return 0 if counts[0] < counts[1] else 1


def choose_decision(cfg: TrainConfig, data: ImageData, probs: np.ndarray, targets: np.ndarray) -> Decision:
    """The decision a run keeps, chosen on val predictions.

    Args:
        cfg: The resolved options (``threshold``, ``target_recall``, ``positive``).
        data: The data trained on (multi-label or not, classes, train counts).
        probs: Val probabilities of the kept weights (sigmoid or softmax), ``(n, C)``.
        targets: Val labels: ``(n, C)`` 0/1 (multi-label) or ``(n,)`` class indices.
    """
    n = len(probs)
    if data.multi_label:
        if cfg.threshold is not None:
            return Decision(True, (float(cfg.threshold),) * len(data.classes), chosen_by="--threshold")
        if n == 0:
            return Decision(True, chosen_by="0.5 (no val split to choose on)")
        return Decision(
            True, tuple(best_f1_thresholds(probs, targets)), chosen_by=f"max F1 per class on val ({n})"
        )
    if len(data.classes) != 2 or (cfg.threshold is None and cfg.target_recall is None):
        return Decision()
    positive = positive_class(cfg, data)
    if cfg.threshold is not None:
        return Decision(False, (float(cfg.threshold),), positive, "--threshold")
    if n == 0:
        raise GraftError("--target-recall chooses the threshold on val: this run has no val split")
    t = threshold_for_recall(probs[:, positive], targets == positive, cfg.target_recall)
    return Decision(
        False, (t,), positive, f"recall >= {cfg.target_recall:g} of {data.classes[positive]!r} on val ({n})"
    )


def chosen_decision(learn: Learner, run: TrainConfig) -> tuple[Decision, dict]:
    """The decision (thresholds) ``learn``'s trained weights get, chosen on the val split's
    predictions (calibrated by the temperature ``learn.decision`` holds, which it keeps, as its
    unknown rule), and for multi-label data the val F1 scores at those thresholds (the
    history's are at 0.5)."""
    data, classes = learn.data, learn.classes
    if not data.multi_label and run.threshold is None and run.target_recall is None:
        return learn.decision, {}
    probs, targets = np.zeros((0, len(classes))), np.zeros(0)
    if data.splits.get("val"):
        interp = learn.interpret(data, "val", precision="fp32")
        probs, targets = interp.probs, interp.labels
    trust = {"temperature": learn.decision.temperature, "reject": learn.decision.reject}
    decision = dataclasses.replace(choose_decision(run, data, probs, targets), **trust)
    if not data.multi_label or not len(probs):
        return decision, {}
    at = EvalResult.from_predictions(probs, targets, classes, decision=decision)
    return decision, {
        "val_macro_f1_at_thresholds": at.macro_f1,
        "val_micro_f1_at_thresholds": at.micro_f1,
    }
