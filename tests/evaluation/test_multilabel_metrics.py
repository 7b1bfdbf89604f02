"""Multi-label metrics: by hand on a small case, and against scikit-learn on a random one."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, log_loss

from graft.evaluation.metrics import EvalResult
from graft.evaluation.multilabel import MultiLabelResult, bce_per_image, label_set
from graft.inference.decision import Decision

CLASSES = ["cat", "dog", "fox"]
# Four images; fox is never true and answered once.
TARGETS = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]])
PROBS = np.array(
    [
        [0.9, 0.2, 0.1],  # cat: right
        [0.8, 0.4, 0.1],  # cat dog: dog missed at 0.5, found at 0.3
        [0.1, 0.3, 0.6],  # none: fox answered (false positive)
        [0.3, 0.7, 0.2],  # dog: right
    ]
)
MULTI = Decision(multi_label=True)


def test_small_case_by_hand():
    result = EvalResult.from_predictions(PROBS, TARGETS, CLASSES, decision=MULTI)
    assert isinstance(result, MultiLabelResult) and result.multi_label
    assert (result.n, result.exact, result.correct) == (4, 2, 2) and result.accuracy == 0.5
    rows = {r["class"]: r for r in result.per_class}
    # cat: tp 2, fp 0, fn 0. dog: tp 1, fn 1 -> P 1, R 1/2, F1 2/3. fox: fp 1 -> all 0.
    assert (rows["cat"]["precision"], rows["cat"]["recall"], rows["cat"]["f1"]) == (1, 1, 1)
    assert rows["dog"]["recall"] == 0.5 and rows["dog"]["f1"] == pytest.approx(2 / 3)
    assert rows["fox"]["f1"] == 0 and rows["fox"]["support"] == 0 and rows["fox"]["predicted"] == 1
    # micro: tp 3, fp 1, fn 1 -> 6 / 8.
    assert result.micro_f1 == pytest.approx(0.75)
    # macro over cat, dog and fox (answered once, so counted): (1 + 2/3 + 0) / 3.
    assert result.macro_f1 == pytest.approx((1 + 2 / 3) / 3)
    # AP: cat's two positives rank first -> 1; dog: 0.7 (pos), 0.4 (pos) rank first -> 1; fox: none.
    assert rows["cat"]["ap"] == 1 and rows["dog"]["ap"] == 1 and rows["fox"]["ap"] is None
    assert result.mean_ap == 1.0
    expected = -np.mean(TARGETS * np.log(PROBS) + (1 - TARGETS) * np.log(1 - PROBS))
    assert result.loss == pytest.approx(expected)
    assert (result.no_label, result.none_true) == (0, 1)
    assert [r["threshold"] for r in result.per_class] == [0.5, 0.5, 0.5]


def test_thresholds_decide_the_answers_but_not_ap():
    tuned = Decision(multi_label=True, thresholds=(0.5, 0.3, 0.7), chosen_by="max F1 on val")
    result = EvalResult.from_predictions(PROBS, TARGETS, CLASSES, decision=tuned)
    # dog at 0.3: the 0.4 is found, and the none image's 0.3 is a false dog; fox at 0.7: not answered.
    assert result.exact == 3 and result.no_label == 0
    rows = {r["class"]: r for r in result.per_class}
    assert rows["dog"]["recall"] == 1 and rows["dog"]["precision"] == pytest.approx(2 / 3)
    assert rows["dog"]["threshold"] == 0.3 and rows["fox"]["predicted"] == 0
    # fox has no image and no answer now: left out of the macro mean.
    assert result.macro_f1 == pytest.approx((1 + 0.8) / 2)
    assert result.mean_ap == 1.0
    text = result.format()
    assert "max F1 on val" in text and "all classes right on 3 of 4 images" in text
    assert "confusion" not in text


def test_random_case_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    targets = (rng.random((300, 5)) < [0.5, 0.3, 0.1, 0.02, 0.0]).astype(int)
    probs = np.clip(targets * 0.35 + rng.random((300, 5)) * 0.65, 0.001, 0.999)
    thresholds = (0.5, 0.4, 0.6, 0.5, 0.5)
    result = EvalResult.from_predictions(
        probs, targets, list("abcde"), decision=Decision(multi_label=True, thresholds=thresholds)
    )
    answered = probs >= np.array(thresholds)
    assert result.accuracy == pytest.approx((answered == targets).all(1).mean())
    assert result.micro_f1 == pytest.approx(f1_score(targets, answered, average="micro"))
    counted = [c for c in range(5) if targets[:, c].any() or answered[:, c].any()]
    assert result.macro_f1 == pytest.approx(
        f1_score(targets, answered, average="macro", labels=counted, zero_division=0)
    )
    with_pos = [c for c in range(5) if targets[:, c].any()]
    assert len(with_pos) == 4  # class e has no positive: no AP, out of the mean
    aps = [average_precision_score(targets[:, c], probs[:, c]) for c in with_pos]
    assert result.mean_ap == pytest.approx(np.mean(aps))
    assert [result.per_class[c]["ap"] for c in with_pos] == pytest.approx(aps)
    assert result.loss == pytest.approx(log_loss(targets.ravel(), probs.ravel()))


def test_to_dict_is_json_with_the_metrics():
    result = EvalResult.from_predictions(PROBS, TARGETS, CLASSES, decision=MULTI)
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["multi_label"] is True and d["accuracy"] == d["exact_match"] == 0.5
    assert d["micro_f1"] == pytest.approx(0.75) and d["map"] == 1.0 and d["n"] == 4
    assert [r["class"] for r in d["per_class"]] == CLASSES and d["per_class"][2]["ap"] is None
    assert d["decision"]["activation"] == "sigmoid" and "confusion" not in d


def test_empty_and_mismatched_labels():
    empty = EvalResult.from_predictions(np.zeros((0, 3)), np.zeros((0, 3)), CLASSES, 2, decision=MULTI)
    assert empty.n == 0 and math.isnan(empty.accuracy) and math.isnan(empty.loss)
    assert empty.undecodable == 2 and "skipped 2" in empty.format()
    with pytest.raises(Exception, match="one 0/1 column per class"):
        EvalResult.from_predictions(PROBS, np.array([0, 1, 0, 1]), CLASSES, decision=MULTI)


def test_per_image_loss_and_label_sets():
    np.testing.assert_allclose(
        bce_per_image(PROBS, TARGETS),
        -(TARGETS * np.log(PROBS) + (1 - TARGETS) * np.log(1 - PROBS)).mean(1),
    )
    assert label_set(np.array([1, 1, 0]), CLASSES) == "cat dog"
    assert label_set(np.array([False, False, False]), CLASSES) == "(none)"
