"""Metrics agree with scikit-learn's on the same predictions."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion

from graft.evaluation.metrics import EvalResult, confusion_matrix, per_class_metrics
from graft.inference.decision import Decision


def test_confusion_and_per_class_match_sklearn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 200)
    # A class (3) that is never predicted: precision must be 0, not NaN.
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 3, 200))
    cm = confusion_matrix(y_true, y_pred, 4)
    assert (cm == sk_confusion(y_true, y_pred, labels=range(4))).all()
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    rows = per_class_metrics(cm, ["a", "b", "c", "d"])
    assert [row["class"] for row in rows] == ["a", "b", "c", "d"]
    np.testing.assert_allclose([row["precision"] for row in rows], p)
    np.testing.assert_allclose([row["recall"] for row in rows], r)
    np.testing.assert_allclose([row["f1"] for row in rows], f)
    assert [row["support"] for row in rows] == list(s)


def test_eval_result_loss_and_accuracy_from_probs():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 1, 1])
    result = EvalResult.from_predictions(probs, labels, ["x", "y"])
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.loss == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4])))
    assert result.confusion.tolist() == [[1, 0], [1, 1]]
    d = result.to_dict()
    assert set(d) >= {"accuracy", "loss", "n", "classes", "per_class", "confusion"}
    assert d["n"] == 3 and sum(map(sum, d["confusion"])) == 3
    text = result.format()
    assert result.correct == 2
    assert "accuracy 0.6667 (2/3)" in text and "confusion matrix" in text


def test_balanced_accuracy_and_macro_f1_match_sklearn_on_imbalanced_data():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(190, int), np.ones(10, int), np.full(5, 2)]  # 38:2:1
    probs = rng.dirichlet([1, 1, 1], len(labels))
    probs[labels == 0, 0] += 1.5  # the big class is mostly right, the others mostly not
    probs /= probs.sum(1, keepdims=True)
    result = EvalResult.from_predictions(probs, labels, ["big", "mid", "tiny"])
    pred = probs.argmax(1)
    assert result.balanced_accuracy == pytest.approx(balanced_accuracy_score(labels, pred))
    assert result.macro_f1 == pytest.approx(f1_score(labels, pred, average="macro"))
    assert result.balanced_accuracy < result.accuracy - 0.2  # what plain accuracy hides
    d = result.to_dict()
    assert d["balanced_accuracy"] == result.balanced_accuracy and d["macro_f1"] == result.macro_f1
    assert "roc_auc" not in d  # three classes: no positive class
    text = result.format()  # each number followed by its bootstrap interval
    assert f"balanced accuracy {result.balanced_accuracy:.4f} [" in text
    assert f"macro F1 {result.macro_f1:.4f} [" in text


def test_balanced_accuracy_by_hand_ignores_classes_without_images():
    # True: a a a b; answered: a a b b. Class c has no image and is never answered.
    probs = np.array([[0.9, 0.1, 0], [0.8, 0.2, 0], [0.3, 0.7, 0], [0.1, 0.9, 0]])
    result = EvalResult.from_predictions(probs, np.array([0, 0, 0, 1]), ["a", "b", "c"])
    assert result.balanced_accuracy == pytest.approx((2 / 3 + 1) / 2)
    # F1 of a: P 1, R 2/3 -> 0.8; of b: P 1/2, R 1 -> 2/3; c is left out of the mean.
    assert result.macro_f1 == pytest.approx((0.8 + 2 / 3) / 2)


def test_binary_roc_auc_and_average_precision_by_hand_with_ties():
    # Positive-class scores, highest first: 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.4 (neg), 0.3 (pos).
    p1 = np.array([0.9, 0.8, 0.8, 0.4, 0.3])
    labels = np.array([1, 0, 1, 0, 1])
    result = EvalResult.from_predictions(np.c_[1 - p1, p1], labels, ["neg", "pos"])
    # Pairs (pos, neg) ranked right: 0.9 beats both, 0.8 ties 0.8 (half) and beats 0.4, 0.3 beats none.
    assert result.roc_auc == pytest.approx((2 + 1.5 + 0) / 6)
    # Thresholds 0.9, 0.8, 0.4, 0.3: recall steps 1/3, 1/3, 0, 1/3 at precision 1, 2/3, 2/4, 3/5.
    assert result.average_precision == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert result.roc_auc == pytest.approx(roc_auc_score(labels, p1))
    assert result.average_precision == pytest.approx(average_precision_score(labels, p1))
    d = result.to_dict()
    assert d["positive"] == "pos" and "threshold" not in d
    assert d["roc_auc"] == result.roc_auc and d["average_precision"] == result.average_precision
    assert f"ROC AUC {result.roc_auc:.4f} [" in result.format()
    assert f"   AP {result.average_precision:.4f}" in result.format()


def test_binary_threshold_decides_the_answers_but_not_the_areas():
    p1 = np.array([0.9, 0.8, 0.8, 0.4, 0.3])
    labels = np.array([1, 0, 1, 0, 1])
    probs = np.c_[1 - p1, p1]
    top = EvalResult.from_predictions(probs, labels, ["neg", "pos"])
    low = EvalResult.from_predictions(probs, labels, ["neg", "pos"], decision=Decision(thresholds=(0.35,)))
    # The top class: pos for 0.9 and both 0.8; right on 0.9, 0.8 (pos) and 0.4 (neg).
    assert top.accuracy == pytest.approx(3 / 5) and top.correct == 3
    # At 0.35 the 0.4 negative is answered pos too: one more false positive.
    assert low.accuracy == pytest.approx(2 / 5) and low.correct == 2
    assert low.confusion.tolist() == [[0, 2], [1, 2]] and top.confusion.tolist() == [[1, 1], [1, 2]]
    assert (low.roc_auc, low.average_precision) == (top.roc_auc, top.average_precision)
    assert low.to_dict()["threshold"] == 0.35
    assert "answered when its probability is at or above 0.3500" in low.format()
    # The positive class can be class 0: the areas are then those of its own probability.
    neg = EvalResult.from_predictions(probs, labels, ["neg", "pos"], decision=Decision(positive=0))
    assert neg.roc_auc == pytest.approx(roc_auc_score(labels == 0, 1 - p1))
    assert neg.to_dict()["positive"] == "neg"


def test_binary_areas_undefined_with_one_class_and_nothing_at_all():
    one = EvalResult.from_predictions(np.array([[0.3, 0.7], [0.6, 0.4]]), np.array([1, 1]), ["a", "b"])
    assert math.isnan(one.roc_auc) and one.to_dict()["roc_auc"] is None
    assert one.average_precision == pytest.approx(1.0)
    empty = EvalResult.from_predictions(np.zeros((0, 2)), np.zeros(0, int), ["a", "b"])
    assert empty.n == 0 and math.isnan(empty.balanced_accuracy) and math.isnan(empty.macro_f1)
    assert json.loads(json.dumps(empty.to_dict()))["roc_auc"] is None
