"""The checkpoint file: what goes in comes back, with the optimizer and generators restorable."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from graft.engine.checkpoint import (
    CHECKPOINT_FILE,
    Progress,
    matching_checkpoint,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)
from graft.infrastructure.errors import GraftError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))


def test_round_trip_stores_only_the_best_tensors_that_differ(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched.step()
    best = {k: v.clone() for k, v in model.state_dict().items()}
    best["2.weight"] = best["2.weight"] + 1  # only the head differs, as in a frozen phase
    gen = torch.Generator().manual_seed(7)
    progress = Progress(
        epoch=3, phase=1, phase_epochs=1, best_epoch=2, history=[{"epoch": 1, "val_acc": 0.5}]
    )
    assert save_checkpoint(tmp_path, progress, model, best, opt, sched, {"features": gen}, {"k": [1, 2]})

    with safe_open(str(tmp_path / CHECKPOINT_FILE), framework="pt") as f:
        assert [k for k in f.keys() if k.startswith("best.")] == ["best.2.weight"]  # noqa: SIM118
    ck = read_checkpoint(tmp_path)
    assert ck.progress == progress and ck.meta == {"k": [1, 2]}
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model[k], v) and torch.equal(ck.best[k], best[k])

    other = torch.optim.AdamW(_model().parameters(), lr=0.1)
    other_sched = torch.optim.lr_scheduler.StepLR(other, step_size=2, gamma=0.5)
    other.load_state_dict(ck.optimizer)
    other_sched.load_state_dict(ck.scheduler)
    assert other_sched.last_epoch == 1 and other.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for pid, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(other.state_dict()["state"][pid][key], value)


def test_generators_come_back_where_they_were(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    save_checkpoint(tmp_path, Progress(), _model(), None, None, None, {"features": gen}, {})
    expected = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=gen))
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    gen.manual_seed(99)
    restore_rng(read_checkpoint(tmp_path).rng, {"features": gen})
    again = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=gen))
    assert torch.equal(expected[0], again[0]) and expected[1:3] == again[1:3]
    assert torch.equal(expected[3], again[3])


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    split = {"classes": ["a", "b"], "splits": {"train": [["a/1.png", "a"]]}}
    meta = {"config": {"epochs": 3, "lr": 0.002, "device": "cpu"}, "split": split}
    save_checkpoint(tmp_path, Progress(epoch=1), _model(), None, None, None, {}, meta)
    same = {"epochs": 3, "lr": "auto", "device": "cuda"}  # lr auto matches the rate it found
    assert matching_checkpoint(tmp_path, same, split).progress.epoch == 1
    with pytest.raises(GraftError, match=r"other options \(epochs\)"):
        matching_checkpoint(tmp_path, {**same, "epochs": 5}, split)
    with pytest.raises(GraftError, match="other data"):
        matching_checkpoint(tmp_path, same, {**split, "classes": ["a", "c"]})
    assert matching_checkpoint(tmp_path / "nothing-here", same, split) is None


def test_a_checkpoint_from_before_an_option_existed_matches_its_default(tmp_path: Path) -> None:
    split = {"classes": ["a", "b"], "splits": {"train": [["a/1.png", "a"]]}}
    meta = {"config": {"epochs": 3}, "split": split}  # written before normalize and crop_padding
    save_checkpoint(tmp_path, Progress(epoch=1), _model(), None, None, None, {}, meta)
    now = {"epochs": 3, "normalize": "model", "crop_padding": 0}
    assert matching_checkpoint(tmp_path, now, split).progress.epoch == 1
    with pytest.raises(GraftError, match=r"other options \(crop_padding, normalize\)"):
        matching_checkpoint(tmp_path, {**now, "normalize": "data", "crop_padding": 4}, split)
