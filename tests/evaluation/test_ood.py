"""graft evaluate --ood's numbers, against scikit-learn and counts done by hand."""

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from graft.evaluation.ood import OodResult
from graft.inference.decision import Reject


def test_auroc_and_rates_match_a_count_by_hand():
    rng = np.random.default_rng(0)
    inside, outside = rng.normal(0.3, 0.1, 200), rng.normal(0.6, 0.1, 300)
    correct = rng.random(200) < 0.9
    rule = Reject(0.45)
    r = OodResult.from_scores(inside, outside, correct, rule)
    expected = roc_auc_score(np.r_[np.zeros(200), np.ones(300)], np.r_[inside, outside])
    assert math.isclose(r.auroc, expected, abs_tol=1e-12)
    assert r.outside_rejected == (outside > 0.45).mean()
    assert r.inside_rejected == (inside > 0.45).mean()
    assert r.accepted_accuracy == correct[inside <= 0.45].mean()
    low, high = r.intervals["auroc"]
    assert low < r.auroc < high and high - low < 0.1
    low, high = r.intervals["outside_rejected"]
    assert low <= r.outside_rejected <= high
    d = r.to_dict()
    assert d["threshold"] == 0.45 and d["inside"] == 200 and d["outside"] == 300
    assert "AUROC" in r.format() and "answered 'unknown'" in r.format()


def test_coverage_counts_an_answered_outside_image_as_wrong():
    # Two right in-distribution images score lowest, then an outside image, then a wrong one.
    r = OodResult.from_scores(np.array([0.1, 0.2, 0.9]), np.array([0.5]), np.array([True, True, False]), None)
    coverage, accuracy = r.coverage()
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert accuracy.tolist() == [1.0, 1.0, 2 / 3, 0.5]
    assert math.isnan(r.outside_rejected) and "at threshold" not in r.format()
    assert math.isclose(r.auroc, 2 / 3)  # the outside image outscores two of the three
