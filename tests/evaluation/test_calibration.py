"""Calibration: temperature scaling, expected calibration error, reliability bins, coverage curves."""

import numpy as np
import pytest

from graft.evaluation.calibration import (
    TEMPERATURE_BOUNDS,
    coverage_curve,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    uncalibrated,
)
from graft.evaluation.plots import plot_coverage, plot_reliability, png_bytes


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def calibrated_sample(n: int = 4000, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): these logits are calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(n, classes))
    probs = softmax(logits)
    labels = (probs.cumsum(1) < rng.random((n, 1))).sum(1)  # one draw per row
    return logits, labels


def test_fit_temperature_recovers_an_over_confident_models_scale():
    logits, labels = calibrated_sample()
    over = logits * 3  # an over-confident model: its true logits scaled up
    t = fit_temperature(over, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(softmax(over), labels)
    after = expected_calibration_error(softmax(over / t), labels)
    assert after < before / 4 and after < 0.03


def test_fit_temperature_is_the_same_on_log_probabilities():
    logits, labels = calibrated_sample(n=1000, seed=1)
    over = logits * 2.5 + 7.0  # a shift per row changes nothing either
    assert fit_temperature(log_softmax(over), labels) == pytest.approx(
        fit_temperature(over, labels), rel=1e-5
    )


def test_fit_temperature_under_confident_and_edge_cases():
    logits, labels = calibrated_sample(n=2000, seed=2)
    assert fit_temperature(logits / 2, labels) == pytest.approx(0.5, rel=0.1)
    assert fit_temperature(logits[:1], labels[:1]) == 1.0
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    # Always right with a margin: the NLL keeps falling as T shrinks, down to the bound.
    separable = np.eye(3)[[0, 1, 2, 0]] * 5
    assert fit_temperature(separable, np.array([0, 1, 2, 0])) == pytest.approx(
        TEMPERATURE_BOUNDS[0], rel=1e-3
    )
    # A probability that underflowed to 0 (log -inf) is clamped, not a NaN.
    with np.errstate(divide="ignore"):
        logp = np.log(np.array([[1.0, 0.0], [0.3, 0.7], [0.9, 0.1]]))
    assert np.isfinite(fit_temperature(logp, np.array([0, 1, 1])))
    with pytest.raises(ValueError):
        fit_temperature(logits[:3], labels[:2])


def test_uncalibrated_inverts_the_temperature():
    logits, _ = calibrated_sample(n=50, seed=3)
    calibrated = softmax(logits / 2.5)
    np.testing.assert_allclose(uncalibrated(calibrated, 2.5), softmax(logits), atol=1e-12)
    np.testing.assert_allclose(uncalibrated(calibrated, 1.0), calibrated, atol=1e-15)
    assert np.isfinite(uncalibrated(np.array([[1.0, 0.0]]), 3.0)).all()


def test_ece_of_calibrated_probabilities_is_small_and_of_over_confident_ones_large():
    logits, labels = calibrated_sample(seed=4)
    assert expected_calibration_error(softmax(logits), labels) < 0.03
    assert expected_calibration_error(softmax(logits * 3), labels) > 0.15
    assert np.isnan(expected_calibration_error(np.zeros((0, 3)), np.zeros(0, int)))


def test_ece_by_hand():
    # Bin (0.6, 0.667]: confidence 0.65, both right; bin (0.867, 0.933]: confidence 0.9, one of two.
    probs = np.array([[0.65, 0.35], [0.35, 0.65], [0.9, 0.1], [0.1, 0.9]])
    labels = np.array([0, 1, 0, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx((2 * 0.35 + 2 * 0.4) / 4)


def test_reliability_bins_count_every_image_once():
    logits, labels = calibrated_sample(n=500, seed=5)
    probs = softmax(logits * 2)
    bins = reliability_bins(probs, labels, bins=10)
    assert sum(b["count"] for b in bins) == 500
    assert all(b["count"] > 0 and b["lo"] < b["confidence"] <= b["hi"] for b in bins)
    assert [b["lo"] for b in bins] == sorted(b["lo"] for b in bins)
    # A confidence on an edge falls in the bin below it: (lo, hi].
    edge = reliability_bins(np.array([[0.5, 0.5]]), np.array([0]), bins=10)
    assert edge[0]["lo"] == pytest.approx(0.4) and edge[0]["hi"] == pytest.approx(0.5)


def test_coverage_curve_ends_at_plain_accuracy_and_falls_for_an_informative_confidence():
    logits, labels = calibrated_sample(n=2000, seed=6)
    probs = softmax(logits)
    correct = probs.argmax(1) == labels
    coverage, accuracy = coverage_curve(probs.max(1), correct)
    assert coverage[-1] == 1.0 and accuracy[-1] == pytest.approx(correct.mean())
    np.testing.assert_allclose(coverage, np.arange(1, 2001) / 2000)
    # The most confident tenth is far more accurate than all, and the curve mostly falls.
    assert accuracy[199] > correct.mean() + 0.2
    assert accuracy[199] >= accuracy[999] >= accuracy[-1]


def test_coverage_curve_spreads_ties_and_ranks_nan_last():
    coverage, accuracy = coverage_curve(
        np.array([0.9, 0.9, 0.5, np.nan]), np.array([True, False, True, True])
    )
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(accuracy, [0.5, 0.5, 2 / 3, 0.75])  # the tie: its mean, in any order
    empty = coverage_curve(np.zeros(0), np.zeros(0, bool))
    assert len(empty[0]) == len(empty[1]) == 0


def test_plots_draw():
    logits, labels = calibrated_sample(n=300, seed=7)
    over = softmax(logits * 3)
    reliability = plot_reliability(over, softmax(logits), labels)
    ece = expected_calibration_error(over, labels)
    legend = [t.get_text() for t in reliability.axes[0].get_legend().get_texts()]
    assert f"before calibration (ECE {ece:.3f})" in legend
    curve = coverage_curve(over.max(1), over.argmax(1) == labels)
    coverage = plot_coverage({"confidence": curve}, {"threshold": 0.8})
    assert any("80% kept" in t.get_text() for t in coverage.axes[0].get_legend().get_texts())
    assert png_bytes(reliability)[:4] == png_bytes(coverage)[:4] == b"\x89PNG"
