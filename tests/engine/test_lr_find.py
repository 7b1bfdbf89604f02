"""The learning-rate range test: the valley rule, the sweep itself, and ``lr="auto"`` training."""

import math

import numpy as np
import pytest
import torch

from graft import GraftError, ImageData, Learner
from graft.engine.lr_find import valley
from tests.conftest import make_image_folder


def test_valley_picks_a_point_inside_the_longest_descent():
    lrs = list(np.logspace(-7, 1, 80))
    # Flat, then a steady descent over steps 20..59, then a blow-up.
    losses = [1.0] * 20 + list(np.linspace(0.99, 0.2, 40)) + list(np.linspace(0.3, 5.0, 20))
    # Longest decreasing run: 41 steps, from the last flat step (19) to the bottom (59). fastai's
    # rule counts it from end - length = 18 and goes a third plus a sixth of the way along.
    start, end = 59 - 41, 59
    third = (end - start) / 3
    assert valley(lrs, losses) == lrs[start + int(third) + int(third / 2)]
    assert valley(lrs[:1], losses[:1]) is None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("colors")
    make_image_folder(root / "train", {"red": 12, "green": 12, "blue": 12}, size=(40, 40), seed=1)
    make_image_folder(root / "val", {"red": 3, "green": 3, "blue": 3}, size=(40, 40), seed=2)
    return ImageData.from_folder(root)


def _state(learn):
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


def test_sweep_on_cached_features_restores_the_weights(data):
    learn = Learner(data, "tf_efficientnet_lite0", input_size=32, seed=0)
    before = _state(learn)
    found = learn.lr_find(batch_size=8, augment=False, workers=0, num_it=60, log=lambda _: None)
    assert found.phase == "frozen"
    assert 6 <= len(found.lrs) == len(found.losses) <= 60
    ratios = np.diff(np.log(found.lrs))
    np.testing.assert_allclose(ratios, math.log(1e8) / 60, rtol=1e-6)  # exponential steps
    assert found.lrs[0] == pytest.approx(1e-7)
    assert found.suggestion is not None and found.lrs[0] < found.suggestion < found.lrs[-1]
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in learn.model.parameters())


def test_divergence_stops_the_sweep_early(data):
    learn = Learner(data, "tf_efficientnet_lite0", input_size=32, seed=0)
    found = learn.lr_find(
        batch_size=8, augment=False, workers=0, optimizer="sgd", end_lr=1e6, num_it=100, log=lambda _: None
    )
    assert found.stopped == "diverged"
    assert len(found.lrs) < 100
    assert max(found.losses) > 4 * min(found.losses) or not math.isfinite(found.losses[-1])


def test_whole_network_sweep_on_images_restores_weights_and_statistics(data):
    learn = Learner(data, "tf_efficientnet_lite0", pretrained=False, input_size=32, seed=0)
    before = _state(learn)
    found = learn.lr_find(
        mode="scratch", batch_size=12, augment=False, workers=0, num_it=8, end_lr=1.0, log=lambda _: None
    )
    assert found.phase == "full" and len(found.lrs) == 8
    after = learn.model.state_dict()
    # Parameters and BatchNorm running statistics (which training mode updates) are all put back.
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fit_with_auto_lr_uses_the_suggestion(data):
    learn = Learner(data, "tf_efficientnet_lite0", input_size=32, seed=0)
    lines = []
    learn.fit(mode="features", epochs=3, lr="auto", batch_size=8, augment=False, workers=0, log=lines.append)
    assert learn.lr_finder is not None and learn.lr_finder.suggestion is not None
    assert learn.resolved_config.lr == learn.lr_finder.suggestion == learn.metrics["lr_found"]
    assert any(line.startswith("lr-find: suggested lr") for line in lines)
    assert learn.evaluate().accuracy == 1.0  # colours are easy at any sensible rate


def test_bad_ranges_are_refused(data):
    learn = Learner(data, "tf_efficientnet_lite0", input_size=32)
    with pytest.raises(GraftError, match="start lr < end lr"):
        learn.lr_find(start_lr=1.0, end_lr=0.1, log=lambda _: None)
    with pytest.raises(GraftError, match="lr must be a number or 'auto'"):
        learn.fit(lr="fast", log=lambda _: None)
