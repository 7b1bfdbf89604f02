"""The trainer and its callbacks: custom callbacks and metrics plug in without touching the
engine; TensorBoard, the EMA, the NaN stop and early stopping are callbacks like any other.

Everything trains tf_efficientnet_lite0's head on cached features of generated colour images
(a second per fit), except where the images themselves are needed.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math

import pytest
import torch

from graft.data.dataset import ImageData
from graft.engine.callbacks import BestWeights, Callback, clone_state
from graft.engine.checkpoint import Progress, read_checkpoint
from graft.engine.ema import EMA
from graft.engine.metrics import macro_f1, top_k_accuracy
from graft.engine.trainer import FitResult, fit
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.errors import GraftError
from graft.models import create_model
from tests.conftest import make_image_folder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> ImageData:
    root = tmp_path_factory.mktemp("colors")
    make_image_folder(root / "train", {"red": 8, "green": 8, "blue": 8}, size=(40, 40), seed=1)
    make_image_folder(root / "val", {"red": 3, "green": 3, "blue": 3}, size=(40, 40), seed=2)
    return ImageData.from_folder(root)


@pytest.fixture(scope="module")
def lite0():
    """The pretrained body with a fresh 3-class head, at 32 px; each test trains a deep copy."""
    torch.manual_seed(0)
    model, spec, pre = create_model("tf_efficientnet_lite0", 3)
    return model, spec, dataclasses.replace(pre, input_size=32)


def _cfg(**overrides) -> TrainConfig:
    # fp32 forced: "auto" would compute the training features in bf16 on CPUs with native bf16, and
    # which of EMA and model validates better must not depend on the machine.
    options = {"mode": "features", "epochs": 3, "batch_size": 8, "lr": 0.01, "augment": False, "workers": 0}
    options["precision"] = "fp32"
    return TrainConfig(data="x", **{**options, **overrides}).resolved()


def _fit(lite0, data, cfg, **kwargs) -> tuple[torch.nn.Module, FitResult, list[str]]:
    model, spec, pre = lite0
    model = copy.deepcopy(model)
    lines: list[str] = []
    result = fit(model, spec, pre, data, cfg, CPU, lines.append, **kwargs)
    return model, result, lines


class Recorder(Callback):
    """A custom callback: counts steps, sees every row, keeps the trainer."""

    def __init__(self) -> None:
        self.steps, self.epochs, self.validated, self.trainer = 0, [], [], None

    def before_fit(self, trainer) -> None:
        self.trainer = trainer

    def after_step(self, trainer) -> None:
        self.steps += 1

    def after_validate(self, trainer, row) -> None:
        self.validated.append(dict(row))

    def after_epoch(self, trainer, row) -> None:
        self.epochs.append(row["epoch"])


def test_a_custom_callback_and_metric_plug_in_without_touching_the_engine(lite0, data):
    spy = Recorder()
    metrics = {"f1": macro_f1, "top2": top_k_accuracy(2)}
    _, result, lines = _fit(lite0, data, _cfg(), callbacks=[spy], metrics=metrics)
    assert spy.epochs == [1, 2, 3] and len(result.history) == 3
    assert spy.steps == 3 * spy.trainer.runner.steps_per_epoch == 3 * 3  # 24 images, batches of 8
    for row in result.history:
        assert list(row)[:10] == [
            "epoch",
            "phase",
            "train_loss",
            "train_acc",
            "val_loss",
            "val_acc",
            "val_bal_acc",  # every run's standard metrics come first
            "val_macro_f1",
            "val_f1",
            "val_top2",
        ]
        assert row["val_f1"] == row["val_macro_f1"]  # the same function, passed again
        assert 0 <= row["val_f1"] <= 1 and row["val_top2"] >= row["val_acc"]
    assert all("val_f1" in row for row in spy.validated)
    assert result.history[-1]["val_top2"] == 1.0  # three classes, colours: the top two hold it
    assert any("val_f1" in line for line in lines)  # the table shows the extra columns
    with pytest.raises(GraftError, match="rename them"):
        _fit(lite0, data, _cfg(), metrics={"acc": macro_f1})


def test_tensorboard_event_files_read_back_one_value_per_epoch(lite0, data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result, _ = _fit(lite0, data, _cfg(log="tensorboard"), checkpoint=tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr", "seconds"} <= tags
    for tag in ("train/loss", "val/acc", "lr"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3]
    val_acc = [e.value for e in events.Scalars("val/acc")]
    assert val_acc == pytest.approx([row["val_acc"] for row in result.history])
    # The CSV logger wrote the history beside the checkpoint, as the bundle writes it.
    with open(tmp_path / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and list(rows[0]) == list(result.history[0])

    with pytest.raises(GraftError, match="run folder"):
        _fit(lite0, data, _cfg(log="tensorboard"))


class Jitter(Callback):
    """Noise on the head's weights after every step (after the EMA's update): the model's weights
    wander, and their average is closer to the minimum."""

    order = 40

    def __init__(self, std: float) -> None:
        self.std, self.generator = std, torch.Generator().manual_seed(1)

    @torch.no_grad()
    def after_step(self, trainer) -> None:
        weight = trainer.model.classifier.weight
        weight.add_(torch.randn(weight.shape, generator=self.generator) * self.std)


@pytest.mark.parametrize(("jitter", "kept"), [(0.0, "model"), (0.2, "ema")])
def test_ema_is_validated_and_the_weights_kept_are_those_recorded(lite0, data, jitter, kept):
    spy = Recorder()
    cfg = _cfg(ema=True, ema_decay=0.9, monitor="val_loss")
    model, result, lines = _fit(lite0, data, cfg, callbacks=[spy, Jitter(jitter)])
    ema, best = spy.trainer.callback(EMA), spy.trainer.callback(BestWeights)
    assert ema.steps == 9
    for row in result.history:
        assert isinstance(row["ema_val_loss"], float) and isinstance(row["ema_val_acc"], float)
    assert result.kept == kept
    state = model.state_dict()
    if kept == "ema":  # the average of the weights at its best epoch, not the model's
        assert result.best_epoch == ema.best_epoch
        row = result.history[ema.best_epoch - 1]
        assert row["ema_val_loss"] < min(r["val_loss"] for r in result.history)
        assert all(torch.equal(state[k], v) for k, v in ema.best_state.items())
        assert not torch.equal(state["classifier.weight"], best.state["classifier.weight"])
        assert any(line.startswith(f"kept the EMA weights, from epoch {ema.best_epoch}") for line in lines)
    else:
        assert result.best_epoch == spy.trainer.progress.best_epoch
        assert all(torch.equal(state[k], v) for k, v in best.state.items())
        assert any(line.startswith("kept the model's weights") for line in lines)


class StopAfter(Callback):
    """Interrupts the run once the checkpoint of ``epoch`` is written (as a kill would)."""

    order = 90

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def end_epoch(self, trainer) -> None:
        if trainer.progress.epoch == self.epoch:
            raise KeyboardInterrupt


def test_ema_and_checkpoint_resume_go_on_exactly(lite0, data, tmp_path):
    cfg = _cfg(ema=True, ema_decay=0.9, epochs=4)
    whole, expected, _ = _fit(lite0, data, cfg, checkpoint=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        _fit(lite0, data, cfg, checkpoint=tmp_path / "cut", callbacks=[StopAfter(2)])
    ck = read_checkpoint(tmp_path / "cut")
    assert ck.progress.epoch == 2 and any(k.startswith("EMA.weights.") for k in ck.extra)
    resumed, result, lines = _fit(lite0, data, cfg, checkpoint=tmp_path / "cut", resume=ck)
    assert "resuming after epoch 2 of 4" in lines

    def scores(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert scores(result.history) == scores(expected.history)
    assert (result.kept, result.best_epoch) == (expected.kept, expected.best_epoch)
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_loss_stops_and_keeps_the_best_weights_so_far(lite0, data):
    calls = {"n": 0}

    def blows_up(logits, targets):  # the fifth training step (the second epoch) gives NaN
        loss = torch.nn.functional.cross_entropy(logits, targets)
        if logits.requires_grad:
            calls["n"] += 1
            if calls["n"] == 5:
                return loss * math.nan
        return loss

    class KeepFirst(Callback):
        order = 15  # after BestWeights

        def after_epoch(self, trainer, row):
            if row["epoch"] == 1:
                self.state = clone_state(trainer.model)

    first = KeepFirst()
    model, result, lines = _fit(lite0, data, _cfg(), loss=blows_up, callbacks=[first])
    assert result.stopped.startswith("loss became nan during epoch 2 (frozen)")
    assert len(result.history) == 1 and result.best_epoch == 1
    assert f"training stopped: {result.stopped}" in lines
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in first.state.items())

    calls["n"] = 0  # a NaN in the first epoch: no weights worth keeping, so an error

    def at_once(logits, targets):
        return blows_up(logits, targets) * (math.nan if logits.requires_grad else 1.0)

    with pytest.raises(GraftError, match="loss became nan during epoch 1"):
        _fit(lite0, data, _cfg(), loss=at_once)


def test_early_stopping_ends_the_phase(lite0, data):
    def flat(logits, targets):  # no gradient: every epoch scores the same, none improves
        return (logits * 0).sum()

    _, result, lines = _fit(lite0, data, _cfg(epochs=6, patience=2), loss=flat)
    assert len(result.history) == 3 and result.best_epoch == 1
    assert result.stopped == "early stopping"
    assert "early stopping: 2 epochs without val_acc improvement (frozen)" in lines


def test_fit_result_and_progress_keep_reading_the_old_name():
    result = FitResult(unfreeze_skipped="good enough")
    assert result.skipped == "good enough"
    old = {"epoch": 2, "skipped": "good enough", "image_epochs": 1}  # a checkpoint from before
    assert Progress.from_dict(old) == Progress(epoch=2, unfreeze_skipped="good enough", image_epochs=1)


def test_lr_find_stops_through_the_trainer_without_an_exception_in_the_loss(lite0, data):
    from graft.engine.lr_find import lr_find

    model, spec, pre = lite0
    model = copy.deepcopy(model)
    before = clone_state(model)
    found = lr_find(model, spec, pre, data, _cfg(), CPU, num_it=10, log=lambda _: None)
    assert found.stopped == "num_it" and len(found.lrs) == 10  # over four epochs of three steps
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_resumed_run_logs_each_epoch_once_to_tensorboard(lite0, data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(log="tensorboard")
    with pytest.raises(KeyboardInterrupt):
        _fit(lite0, data, cfg, checkpoint=tmp_path, callbacks=[StopAfter(2)])
    _, result, _ = _fit(lite0, data, cfg, checkpoint=tmp_path, resume=read_checkpoint(tmp_path))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("val/loss")] == pytest.approx(
        [r["val_loss"] for r in result.history]
    )


def test_graft_train_log_tensorboard_writes_event_files(tmp_path):
    """The command line: ``graft train DATA --log tensorboard`` leaves RUN/tensorboard readable."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from graft.cli.main import main

    data = make_image_folder(tmp_path / "data", {"red": 8, "green": 8, "blue": 8}, seed=5)
    run = tmp_path / "run"
    argv = ["train", str(data), "--out", str(run), "--mode", "features", "--epochs", "2", "--batch-size", "8"]
    argv += ["--workers", "0", "--device", "cpu", "--input-size", "32", "--no-report", "--log", "tensorboard"]
    assert main(argv) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", "val/acc", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
