"""A recipe chosen by time: the estimate logged before training, and --time-budget's choice."""

from __future__ import annotations

import pytest
import torch

from graft.data.dataset import ImageData
from graft.engine.estimate import Costs, estimates
from graft.infrastructure.config import TrainConfig, parse_duration
from graft.infrastructure.errors import GraftError
from graft.learner import timing
from graft.learner.learner import Learner
from tests.conftest import make_image_folder


@pytest.fixture(scope="module")
def learn(tmp_path_factory) -> Learner:
    root = tmp_path_factory.mktemp("colors")
    make_image_folder(root / "train", {"red": 6, "blue": 6}, size=(48, 48), seed=1)
    make_image_folder(root / "val", {"red": 2, "blue": 2}, size=(48, 48), seed=2)
    torch.manual_seed(0)
    return Learner(ImageData.from_folder(root), "tf_efficientnet_lite0", input_size=64, workers=0)


def _plan(learn: Learner, **options):
    run = learn.resolve_config(TrainConfig(data=str(learn.data.root), precision="fp32", **options))
    lines: list[str] = []
    parts = (learn.model, learn.spec, learn.preprocessing, learn.data, run, learn.device)
    new, record = timing.plan_by_time(*parts, learn.default_top(), lines.append)
    return run, new, record, lines


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("2m", 120), ("1.5h", 5400), (" 2M ", 120)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "2d", "0", "-1m"])
def test_bad_durations_are_refused(text):
    with pytest.raises(GraftError, match="time budget"):
        parse_duration(text)


def test_finetune_trains_the_last_stage_unless_told_otherwise(learn):
    top = ["blocks.5", "blocks.6", "conv_head", "bn2"]
    assert learn.resolve_config(TrainConfig(data="d")).unfreeze == top
    assert learn.resolve_config(TrainConfig(data="d", unfreeze=["auto"])).unfreeze == top
    assert learn.resolve_config(TrainConfig(data="d", unfreeze=["all"])).unfreeze == ["all"]
    assert learn.resolve_config(TrainConfig(data="d", mode="full")).unfreeze is None  # every block
    again = learn.resolve_config(learn.resolve_config(TrainConfig(data="d")))
    assert again.unfreeze == top  # resolving what ran changes nothing


def test_the_estimate_scales_measured_costs():
    costs = Costs(decode=0.01, forward=0.02, full_step=0.1, top_step=0.01, top_forward=0.002)
    found = estimates(costs, n_train=100, n_val=50, views=2, frozen_epochs=10, epochs=3, uncached=1.0)
    assert found["frozen"].extract == pytest.approx(150 * 0.01 + 250 * 0.02)
    assert found["top"].train - found["frozen"].train == pytest.approx(3 * (100 * 0.01 + 50 * 0.002))
    assert found["full"].train - found["frozen"].train == pytest.approx(3 * (100 * 0.11 + 50 * 0.03))
    assert estimates(costs, 100, 50, 2, 10, 3, uncached=0.0)["full"].extract == 0.0


def test_default_run_logs_one_estimate_and_changes_nothing(learn):
    run, new, record, lines = _plan(learn)
    assert new == run
    assert [line for line in lines if line.startswith("estimate on this cpu: about ")] == lines
    assert set(record["estimate_seconds"]) == {"frozen", "top"}


@pytest.mark.parametrize(("budget", "recipe"), [("0.001s", "frozen"), ("1000h", "full")])
def test_a_time_budget_picks_the_most_accurate_recipe_that_fits(learn, budget, recipe):
    run, new, record, lines = _plan(learn, time_budget=budget)
    assert record["recipe"] == recipe
    assert any(timing.RECIPES[recipe] in line for line in lines if line.startswith("time budget"))
    if recipe == "full":
        assert new.unfreeze == ["all"]
    else:
        assert new.epochs == 0 and new.freeze_epochs == run.freeze_epochs


def test_a_long_unfreeze_on_the_images_says_what_to_pass_instead(learn, monkeypatch):
    monkeypatch.setattr(timing, "LONG_SECONDS", 0.0)  # this tiny run is not long: say it is
    _, _, record, lines = _plan(learn, unfreeze=["all"])
    assert "full" in record["estimate_seconds"]
    (note,) = [line for line in lines if line.startswith("note: the unfrozen epochs on the images")]
    assert "--unfreeze auto" in note and "--time-budget" in note


def test_fit_records_the_estimate_and_the_recipe(learn):
    lines: list[str] = []
    learn.fit(freeze_epochs=1, epochs=1, time_budget="0.001s", precision="fp32", log=lines.append)
    assert learn.metrics["recipe"] == "frozen"
    assert set(learn.metrics["estimate_seconds"]) == {"frozen", "top", "full"}
    assert [row["phase"] for row in learn.history] == ["frozen"]  # the budget left no time to unfreeze
    assert learn.resolved_config.epochs == 0 and learn.config.epochs == 1  # the request is kept as asked


def test_undecodable_training_images_do_not_stop_the_estimate(tmp_path):
    from graft.engine.estimate import measure

    root = tmp_path / "data"
    make_image_folder(root / "train", {"red": 4, "blue": 4}, size=(48, 48), seed=1)
    make_image_folder(root / "val", {"red": 2, "blue": 2}, size=(48, 48), seed=2)
    data = ImageData.from_folder(root)
    for sample in data.splits["train"][:3]:
        sample.path.write_bytes(b"\\x89PNG\\r\\n\\x1a\\n not an image any more")
    learn = Learner(data, "tf_efficientnet_lite0", input_size=64, workers=0)
    cfg = learn.resolve_config(TrainConfig(data=str(root)))
    costs = measure(learn.model, learn.preprocessing, data, cfg, learn.device)
    assert costs.decode > 0 and costs.forward > 0
