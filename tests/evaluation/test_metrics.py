"""Metrics agree with scikit-learn's on the same predictions."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import precision_recall_fscore_support

from graft.evaluation.metrics import EvalResult, confusion_matrix, per_class_metrics


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
