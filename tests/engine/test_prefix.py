"""Cached-prefix fine-tuning in the trainer: the top trains on cached activations, the prefix
never moves, val scores are those of the images, and a resumed run goes on exactly.

tf_efficientnet_lite0 (bundled weights) on generated colour images at 64 px.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from graft.data.dataset import ImageData
from graft.data.loaders import make_loader
from graft.data.transforms import eval_transform
from graft.engine.checkpoint import read_checkpoint
from graft.engine.trainer import fit
from graft.features.forward import infer
from graft.infrastructure.config import TrainConfig
from graft.models import body_blocks, create_model
from graft.models.split import default_top
from tests.conftest import make_image_folder
from tests.engine.test_trainer import StopAfter

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> ImageData:
    root = tmp_path_factory.mktemp("colors")
    make_image_folder(root / "train", {"red": 8, "green": 8, "blue": 8}, size=(48, 48), seed=1)
    make_image_folder(root / "val", {"red": 3, "green": 3, "blue": 3}, size=(48, 48), seed=2)
    return ImageData.from_folder(root)


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    model, spec, pre = create_model("tf_efficientnet_lite0", 3)
    return model, spec, dataclasses.replace(pre, input_size=64)


def _cfg(top: list[str], **overrides) -> TrainConfig:
    options = {
        "freeze_epochs": 2,
        "epochs": 2,
        "batch_size": 8,
        "lr": 0.01,
        "workers": 0,
        "precision": "fp32",
    }
    options["cache_views"] = 2  # augmentation comes from the cached views
    return TrainConfig(data="x", **{**options, **overrides}).resolved(top=top)


def _fit(lite0, data, cfg, **kwargs):
    model, spec, pre = lite0
    model = copy.deepcopy(model)
    lines: list[str] = []
    return model, fit(model, spec, pre, data, cfg, CPU, lines.append, **kwargs), lines


def test_the_top_trains_on_cached_activations_and_the_prefix_stays(lite0, data):
    model0, spec, pre = lite0
    top = default_top(model0, spec, pre.input_size)
    model, result, lines = _fit(lite0, data, _cfg(top))
    assert [row["phase"] for row in result.history] == ["frozen"] * 2 + ["unfrozen"] * 2
    assert any(line.startswith("activations of the frozen prefix: conv_stem .. blocks.4") for line in lines)
    before, after = model0.state_dict(), model.state_dict()
    changed = {
        name
        for name, _ in body_blocks(model, spec)
        if any(not torch.equal(before[k], after[k]) for k in before if k.startswith(name + "."))
    }
    assert changed and changed <= set(top)
    # The kept epoch's val loss, scored on cached activations, is what the images give.
    loader = make_loader(data.splits["val"], eval_transform(pre), batch_size=8, workers=0)
    logits, idx, _ = infer(model, loader, CPU)
    loss = torch.nn.functional.cross_entropy(logits, data.targets("val")[idx]).item()
    assert result.history[result.best_epoch - 1]["val_loss"] == pytest.approx(loss, rel=1e-3, abs=1e-4)


def test_without_the_cache_the_same_blocks_train_on_the_images(lite0, data):
    model0, spec, pre = lite0
    top = default_top(model0, spec, pre.input_size)
    model, result, lines = _fit(lite0, data, _cfg(top, cache_prefix=False))
    assert [row["phase"] for row in result.history][-1] == "unfrozen"
    assert not any(line.startswith("activations of the frozen prefix") for line in lines)
    before, after = model0.state_dict(), model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("conv_stem.", "blocks.0.")))


def test_a_run_killed_in_the_cached_prefix_phase_resumes_exactly(lite0, data, tmp_path):
    model0, spec, pre = lite0
    cfg = _cfg(top=default_top(model0, spec, pre.input_size), epochs=3)
    whole, expected, _ = _fit(lite0, data, cfg, checkpoint=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        _fit(lite0, data, cfg, checkpoint=tmp_path / "cut", callbacks=[StopAfter(3)])
    ck = read_checkpoint(tmp_path / "cut")
    assert ck.progress.epoch == 3
    resumed, result, _ = _fit(lite0, data, cfg, checkpoint=tmp_path / "cut", resume=ck)

    def scores(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert scores(result.history) == scores(expected.history)
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_when_the_activations_cannot_be_cached_the_top_trains_on_the_images(
    lite0, data, tmp_path, monkeypatch
):
    blocked = tmp_path / "a-file"
    blocked.write_text("no cache folder can be made under a file, even by root")
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(blocked))
    model0, spec, pre = lite0
    top = default_top(model0, spec, pre.input_size)
    with pytest.warns(UserWarning, match="could not write the activation cache"):
        model, result, lines = _fit(lite0, data, _cfg(top))
    assert any("could not be cached: the top trains on the images" in line for line in lines)
    assert [row["phase"] for row in result.history][-2:] == ["unfrozen", "unfrozen"]
    before, after = model0.state_dict(), model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("conv_stem.", "blocks.0.")))
