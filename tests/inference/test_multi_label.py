"""Sigmoid probabilities (multi-label), their TTA average, and answers from a Decision."""

from pathlib import Path

import numpy as np
import pytest
import torch

from graft import GraftError
from graft.data.images import load_image
from graft.features.views import eval_view, tta_views
from graft.inference.decision import Decision
from graft.inference.predict import sample_probs
from graft.inference.predictions import Prediction, decide, top_k

CPU = torch.device("cpu")


def _by_hand(model, pre, samples, views, activation):
    out = []
    with torch.inference_mode():
        for s in samples:
            image = load_image(s.path, pre.resize_size)
            logits = model(torch.stack([v.transform(image) for v in views])).double()
            p = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, 1)
            out.append(p.mean(0).numpy())
    return np.stack(out)


def test_sigmoid_gives_a_probability_per_class(model_and_samples):
    model, spec, pre, samples = model_and_samples
    soft, _ = sample_probs(model, spec, pre, samples, CPU, workers=0)
    sig, kept = sample_probs(model, spec, pre, samples, CPU, workers=0, activation="sigmoid")
    assert kept.tolist() == list(range(len(samples)))
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-9)
    assert not np.allclose(sig.sum(1), 1.0, atol=1e-3)  # independent per class
    np.testing.assert_allclose(sig, _by_hand(model, pre, samples, [eval_view(pre)], "sigmoid"), atol=1e-5)
    # The same logits underneath: the classes rank alike.
    assert (np.argsort(-sig, 1) == np.argsort(-soft, 1)).all()
    with pytest.raises(GraftError, match="activation must be one of"):
        sample_probs(model, spec, pre, samples, CPU, workers=0, activation="relu")


@pytest.mark.parametrize("tta", [True, 4])
def test_tta_averages_the_views_sigmoids_on_both_paths(model_and_samples, tta):
    model, spec, pre, samples = model_and_samples
    views = tta_views(pre, 2 if tta is True else tta)
    expected = _by_hand(model, pre, samples, views, "sigmoid")
    direct, _ = sample_probs(model, spec, pre, samples, CPU, tta=tta, workers=0, activation="sigmoid")
    np.testing.assert_allclose(direct, expected, atol=1e-5)
    for _ in range(2):  # computed, then read back from the feature cache
        cached, _ = sample_probs(
            model, spec, pre, samples, CPU, tta=tta, use_cache=True, workers=0, activation="sigmoid"
        )
        np.testing.assert_allclose(cached, expected, atol=1e-5)
    # Not the sigmoid of the mean logit: that would be another number.
    plain, _ = sample_probs(model, spec, pre, samples, CPU, workers=0, activation="sigmoid")
    assert not np.allclose(plain, direct, atol=1e-6)


def test_multi_label_answers_every_class_above_its_threshold():
    probs = np.array([[0.9, 0.2, 0.7], [0.1, 0.2, 0.3], [0.5, 0.61, 0.59]])
    decision = Decision(multi_label=True, thresholds=(0.5, 0.6, 0.6))
    preds = decide(probs, ["x.png", "y.png", "z.png"], ["a", "b", "c"], decision, k=3)
    assert [p.labels for p in preds] == [["a", "c"], [], ["b", "a"]]
    assert preds[0].probs == [0.9, 0.7] and preds[2].probs == [0.61, 0.5]
    # None of the classes: an empty answer, with a safe label and probability.
    assert preds[1].label == "" and preds[1].prob == 0.0 and preds[1].path == Path("y.png")
    assert Prediction(Path("p"), ["a"], [0.4]).label == "a"


def test_single_label_top_k_and_a_binary_threshold():
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    paths = ["a", "b", "c"]
    plain = decide(probs, paths, ["no", "yes"], Decision(), k=2)
    assert [p.labels for p in plain] == [["no", "yes"], ["yes", "no"], ["no", "yes"]]
    assert [p.labels for p in plain] == [p.labels for p in top_k(probs, paths, ["no", "yes"], 2)]
    # A threshold of 0.25 on "yes": the answered class first, then the other.
    low = decide(probs, paths, ["no", "yes"], Decision(thresholds=(0.25,)), k=2)
    assert [p.labels for p in low] == [["yes", "no"], ["yes", "no"], ["yes", "no"]]
    assert low[0].probs == [0.3, 0.7]
    high = decide(probs, paths, ["no", "yes"], Decision(thresholds=(0.9,)), k=1)
    assert [p.label for p in high] == ["no", "no", "no"]
    # k is clamped to 1..classes.
    assert [len(p.labels) for p in decide(probs, paths, ["no", "yes"], k=9)] == [2, 2, 2]
