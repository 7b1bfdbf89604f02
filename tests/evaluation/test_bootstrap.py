"""Bootstrap intervals: their statistics, their vectorised paths, and how the results print them."""

import json
import math

import numpy as np
import pytest

from graft.evaluation.bootstrap import (
    bootstrap_interval,
    bootstrap_intervals,
    bootstrap_mean,
    interval_text,
    percentile_interval,
    resampled_average_precision,
    resampled_counts,
    resampled_roc_auc,
    resampled_weights,
)
from graft.evaluation.curves import average_precision, roc_auc
from graft.evaluation.metrics import EvalResult, per_class_metrics, resampled_scores
from graft.evaluation.multilabel import MultiLabelResult
from graft.evaluation.multilabel import resampled_scores as multilabel_scores
from graft.inference.decision import Decision


def right_answers(n: int, accuracy: float) -> np.ndarray:
    """0/1 per image, exactly ``accuracy`` of them 1 (rounded)."""
    return (np.arange(n) < round(n * accuracy)).astype(float)


def width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def predictions(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are mostly right, and the true labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), labels] += 2.0
    probs = np.exp(logits)
    return probs / probs.sum(1, keepdims=True), labels


def test_interval_contains_the_point_estimate():
    correct = right_answers(153, 147 / 153)
    low, high = bootstrap_mean(correct)
    assert low < correct.mean() < high and low >= 0 and high <= 1
    result = EvalResult.from_predictions(*predictions(153, 4, seed=0), list("abcd"))
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        low, high = result.intervals[name]
        assert low <= getattr(result, name) <= high, name


def test_width_shrinks_as_one_over_sqrt_n():
    small, large = bootstrap_mean(right_answers(100, 0.9)), bootstrap_mean(right_answers(10_000, 0.9))
    assert 8 < width(small) / width(large) < 12  # 100 times the images: a tenth of the width
    # And near the normal approximation's 2 * 1.96 * sqrt(p (1 - p) / n).
    assert width(large) == pytest.approx(2 * 1.96 * math.sqrt(0.9 * 0.1 / 10_000), rel=0.1)


def test_fast_mean_path_agrees_with_the_generic_path():
    correct = (np.random.default_rng(3).random(2_000) < 0.8).astype(float)
    generic = bootstrap_interval(lambda idx: correct[idx].mean(), len(correct), seed=7)
    assert bootstrap_mean(correct, seed=7) == pytest.approx(generic, abs=1e-12)  # the same resamples
    # A single-label result's accuracy interval (from resampled class counts) is that one too.
    probs, labels = predictions(2_000, 10, seed=1)
    result = EvalResult.from_predictions(probs, labels, [str(c) for c in range(10)])
    right = (probs.argmax(1) == labels).astype(float)
    assert result.intervals["accuracy"] == pytest.approx(bootstrap_mean(right), abs=1e-12)


def test_coverage_of_binomial_accuracy_by_simulation():
    # 200 validation sets of 150 images from a model that is right 90% of the time: the 95%
    # interval should hold the true 0.9 in about 95% of them (a percentile bootstrap runs a little low).
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        correct = (rng.random(150) < 0.9).astype(float)
        low, high = bootstrap_mean(correct, seed=trial)
        covered += low <= 0.9 <= high
    assert 0.90 <= covered / 200 <= 0.99


def test_same_seed_same_interval_and_another_seed_another():
    correct = right_answers(300, 0.85)
    assert bootstrap_mean(correct, seed=5) == bootstrap_mean(correct, seed=5)
    assert bootstrap_mean(correct, seed=5) != bootstrap_mean(correct, seed=6)
    probs, labels = predictions(153, 2, seed=2)
    first = EvalResult.from_predictions(probs, labels, ["ants", "bees"])
    again = EvalResult.from_predictions(probs, labels, ["ants", "bees"])
    assert first.headline() == again.headline() and first.intervals == again.intervals


def test_no_images_gives_nan_and_nan_resamples_are_left_out():
    assert all(math.isnan(v) for v in bootstrap_interval(lambda idx: 1.0, 0))
    assert all(math.isnan(v) for v in bootstrap_mean(np.zeros(0)))
    assert bootstrap_intervals(lambda idx: {"x": idx.mean(1)}, 0) == {}
    # Undefined on half the resamples (here: when the first row is drawn): only the rest count.
    values = np.arange(10.0)
    interval = bootstrap_interval(lambda idx: math.nan if 0 in idx else values[idx].mean(), 10)
    assert 1 < interval[0] < interval[1] < 9
    assert all(math.isnan(v) for v in bootstrap_interval(lambda idx: math.nan, 10))
    assert all(math.isnan(v) for v in percentile_interval(np.array([math.nan, math.nan])))


def test_level_and_arguments():
    correct = right_answers(500, 0.7)
    assert width(bootstrap_mean(correct, level=0.5)) < width(bootstrap_mean(correct, level=0.99))
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean(correct, level=1.0)
    with pytest.raises(ValueError, match="samples"):
        bootstrap_mean(correct, samples=0)
    # Resamples come in chunks; the number asked for is what is drawn, whatever the chunking.
    seen = []
    bootstrap_intervals(lambda idx: seen.append(idx.shape) or {"x": idx.mean(1)}, 5_000, samples=333)
    assert sum(k for k, _ in seen) == 333 and {n for _, n in seen} == {5_000} and len(seen) > 1


def test_resampled_counts_and_weights_count_each_draw():
    idx = np.array([[0, 0, 2], [1, 2, 2]])
    np.testing.assert_array_equal(resampled_weights(idx, 3), [[2, 0, 1], [0, 1, 2]])
    codes = np.array([4, 1, 1])  # rows 1 and 2 share a code
    np.testing.assert_array_equal(resampled_counts(idx, codes, 5), [[0, 1, 0, 0, 2], [0, 3, 0, 0, 0]])


def test_resampled_areas_are_the_curves_areas_on_the_drawn_rows():
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 6, 40) / 5  # many ties
    positive = rng.random(40) < 0.4
    idx = rng.integers(0, 40, size=(25, 40))
    idx[0] = np.arange(40)  # the split itself
    idx[1] = np.flatnonzero(positive)[0]  # one positive drawn 40 times: no negative, no ROC AUC
    weights = resampled_weights(idx, 40)
    aucs = resampled_roc_auc(scores, positive)(weights)
    aps = resampled_average_precision(scores, positive)(weights)
    for row, drawn in enumerate(idx):
        assert aucs[row] == pytest.approx(roc_auc(scores[drawn], positive[drawn]), nan_ok=True)
        assert aps[row] == pytest.approx(average_precision(scores[drawn], positive[drawn]), nan_ok=True)
    assert math.isnan(aucs[1]) and aps[1] == 1.0


def test_resampled_single_label_scores_are_the_results_on_the_drawn_images():
    probs, labels = predictions(60, 5, seed=5)
    probs[:, 4] = 0  # class 4 is never answered
    pred = probs.argmax(1)
    classes = list("abcde")
    idx = np.random.default_rng(0).integers(0, 60, size=(6, 60))
    idx[0] = np.arange(60)
    values = resampled_scores(labels, pred, 5)(idx)
    for row, drawn in enumerate(idx):
        result = EvalResult.from_predictions(probs[drawn], labels[drawn], classes)
        for name in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert values[name][row] == pytest.approx(getattr(result, name)), name
    binary = probs[:, :2] / probs[:, :2].sum(1, keepdims=True)
    two = labels % 2
    area = resampled_scores(two, binary.argmax(1), 2, binary[:, 1], two == 1)(idx)["roc_auc"]
    assert area[0] == pytest.approx(EvalResult.from_predictions(binary, two, ["x", "y"]).roc_auc)


def test_resampled_multilabel_scores_are_the_results_on_the_drawn_images():
    rng = np.random.default_rng(6)
    truth = rng.random((50, 4)) < [0.5, 0.2, 0.05, 0.0]
    probs = np.clip(truth * 0.4 + rng.random((50, 4)) * 0.6, 0, 1)
    decision = Decision(multi_label=True, thresholds=(0.5, 0.4, 0.6, 0.5))
    idx = rng.integers(0, 50, size=(8, 50))
    idx[0] = np.arange(50)
    values = multilabel_scores(probs, truth, decision.predicted(probs))(idx)
    for row, drawn in enumerate(idx):
        result = MultiLabelResult.from_predictions(
            probs[drawn], truth[drawn], list("abcd"), decision=decision
        )
        for name, point in [
            ("accuracy", result.accuracy),
            ("map", result.mean_ap),
            ("macro_f1", result.macro_f1),
            ("micro_f1", result.micro_f1),
        ]:
            assert values[name][row] == pytest.approx(point, nan_ok=True), name


def test_single_label_headline_and_dict_show_the_intervals():
    probs, labels = predictions(153, 2, seed=8)
    result = EvalResult.from_predictions(probs, labels, ["ants", "bees"])
    assert set(result.intervals) == {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc"}
    line = result.headline()
    low, high = result.intervals["accuracy"]
    assert line.startswith(
        f"accuracy {result.accuracy:.4f} ({result.correct}/153) [95% CI {low:.3f}-{high:.3f}]   "
    )
    low, high = result.intervals["balanced_accuracy"]
    assert f"balanced accuracy {result.balanced_accuracy:.4f} [{low:.3f}-{high:.3f}]   macro F1" in line
    low, high = result.intervals["roc_auc"]
    assert f"ROC AUC {result.roc_auc:.4f} [{low:.3f}-{high:.3f}]   AP " in line
    assert result.format().splitlines()[0] == line
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["intervals"]["accuracy"] == list(result.intervals["accuracy"])
    assert set(d["intervals"]) == set(result.intervals)
    # Three classes: no ROC AUC, so no interval of it.
    three = EvalResult.from_predictions(*predictions(90, 3, seed=9), list("abc"))
    assert set(three.intervals) == {"accuracy", "balanced_accuracy", "macro_f1"}


def test_multilabel_format_and_dict_show_the_intervals():
    rng = np.random.default_rng(10)
    truth = (rng.random((80, 3)) < 0.4).astype(int)
    probs = np.clip(truth * 0.4 + rng.random((80, 3)) * 0.6, 0, 1)
    result = EvalResult.from_predictions(probs, truth, list("xyz"), decision=Decision(multi_label=True))
    assert set(result.intervals) == {"accuracy", "map", "macro_f1", "micro_f1"}
    head = result.format().splitlines()[0]
    low, high = result.intervals["accuracy"]
    assert head.startswith(
        f"exact match {result.accuracy:.4f} ({result.exact}/80) [95% CI {low:.3f}-{high:.3f}]"
    )
    low, high = result.intervals["map"]
    assert f"mAP {result.mean_ap:.4f} [{low:.3f}-{high:.3f}]   loss" in head
    for name in result.intervals:
        low, high = result.intervals[name]
        assert low <= {"map": result.mean_ap}.get(name, getattr(result, name, None)) <= high, name
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["intervals"]["micro_f1"] == list(result.intervals["micro_f1"])


def test_no_images_prints_no_interval_and_stores_none():
    empty = EvalResult.from_predictions(np.zeros((0, 2)), np.zeros(0, int), ["a", "b"])
    assert "CI" not in empty.headline() and "[" not in empty.headline()
    d = json.loads(json.dumps(empty.to_dict()))
    assert d["intervals"]["accuracy"] == [None, None] and d["intervals"]["roc_auc"] == [None, None]
    multi = EvalResult.from_predictions(
        np.zeros((0, 3)), np.zeros((0, 3)), list("abc"), decision=Decision(True)
    )
    assert "CI" not in multi.format() and multi.to_dict()["intervals"]["map"] == [None, None]
    # Built by hand (as older code does): no intervals, and the text of before.
    cm = np.array([[2, 1], [0, 1]])
    by_hand = EvalResult(0.5, 0.75, 4, ["a", "b"], per_class_metrics(cm, ["a", "b"]), cm)
    assert by_hand.headline().startswith("accuracy 0.7500 (3/4)   balanced accuracy 0.8333   macro F1")
    assert by_hand.to_dict()["intervals"] == {}
    assert (
        interval_text((math.nan, 0.5)) == ""
        and interval_text((0.25, 0.5), first=True) == " [95% CI 0.250-0.500]"
    )
