"""One workflow: ``graft.train`` (the Python API) leaves the run folder ``graft train`` leaves, and
the options asked for are kept apart from what they resolved to."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import graft
from graft import GraftError, ImageData, Learner, TrainConfig, load_learner
from graft.cli.main import main
from graft.infrastructure.config import ResolvedConfig
from tests.conftest import make_image_folder

FAST = {"input_size": 32, "mode": "features", "epochs": 2, "batch_size": 8, "lr": 0.02, "augment": False}
FAST_ARGS = ["--input-size", "32", "--mode", "features", "--epochs", "2", "--batch-size", "8", "--lr", "0.02",
             "--no-augment", "--workers", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf") / "data"
    make_image_folder(root / "train", {"red": 8, "green": 8, "blue": 8}, seed=1)
    make_image_folder(root / "val", {"red": 3, "green": 3, "blue": 3}, seed=2)
    make_image_folder(root / "test", {"red": 3, "green": 3, "blue": 3}, seed=3)
    return root


def _files(run) -> set[str]:
    return {p.name for p in run.iterdir()}


def test_the_python_api_writes_the_run_folder_the_cli_writes(data, tmp_path, capsys):
    cli_run, api_run = tmp_path / "cli", tmp_path / "api"
    assert main(["train", str(data), "--out", str(cli_run), *FAST_ARGS]) == 0
    cli_log = capsys.readouterr().out
    lines: list[str] = []
    done = graft.train(TrainConfig(data=str(data), out=str(api_run), workers=0, **FAST), log=lines.append)
    assert done.run_dir == api_run and done.report == api_run / "report.html"
    assert _files(api_run) == _files(cli_run) and "checkpoint.safetensors" not in _files(api_run)
    cli_meta, api_meta = (json.loads((r / "graft.json").read_text()) for r in (cli_run, api_run))
    assert {"test_acc", "test_loss", "test_n"} <= set(api_meta["metrics"]) == set(cli_meta["metrics"])
    assert api_meta["metrics"]["test_n"] == 9 and done.learner.metrics["test_n"] == 9
    for start in ("data:", "model:", "val: accuracy", "test: accuracy", "saved run to", "report:"):
        assert any(line.startswith(start) for line in lines), start
        assert any(line.startswith(start) for line in cli_log.splitlines()), start
    assert set(api_meta) == set(cli_meta) and {"config", "resolved"} <= set(api_meta)


def test_a_custom_callback_and_metric_reach_the_run_folder(data, tmp_path):
    """The README's extension example through the workflow: a callback sees every epoch, a
    metric becomes a history.csv column of the saved run."""
    from graft.engine.callbacks import Callback

    class Rows(Callback):
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def after_epoch(self, trainer, row) -> None:
            self.rows.append(dict(row))

    def worst_class_recall(logits: torch.Tensor, targets: torch.Tensor) -> float:
        hit = logits.argmax(1) == targets
        return min(hit[targets == c].float().mean().item() for c in targets.unique())

    seen = Rows()
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), workers=0, report=False, **FAST)
    metrics = {"worst_recall": worst_class_recall}
    done = graft.train(cfg, log=lambda _: None, callbacks=[seen], metrics=metrics)
    assert [r["epoch"] for r in seen.rows] == [1, 2]
    saved = (done.run_dir / "history.csv").read_text().splitlines()
    assert "val_worst_recall" in saved[0].split(",") and len(saved) == 3
    assert all(0 <= r["val_worst_recall"] <= r["val_acc"] + 1e-9 for r in seen.rows)


def test_a_second_run_into_the_folder_needs_overwrite(data, tmp_path):
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), workers=0, report=False, **FAST)
    graft.train(cfg, log=lambda _: None)
    with pytest.raises(GraftError, match="already holds a run; pass --overwrite"):
        graft.train(cfg, log=lambda _: None)
    again = graft.train(cfg, overwrite=True, log=lambda _: None)
    assert not {"report.html", "checkpoint.safetensors"} & _files(again.run_dir)
    with pytest.raises(GraftError, match="either a config or a run folder"):
        graft.train(cfg, resume=again.run_dir)
    with pytest.raises(GraftError, match="holds a finished run: there is nothing to resume"):
        graft.train(resume=again.run_dir)


def test_the_request_is_kept_apart_from_what_ran(data, tmp_path):
    learn = Learner(ImageData.from_folder(data), "tf_efficientnet_lite0", input_size=32, seed=0, workers=0)
    asked = learn.config
    learn.fit(mode="features", batch_size=8, lr="auto", augment=False, log=lambda _: None)
    assert learn.config.lr == "auto" and learn.config.epochs is None  # the request, as asked
    ran = learn.resolved_config
    assert isinstance(ran, ResolvedConfig) and ran.lr == learn.metrics["lr_found"] and ran.epochs == 10
    assert asked.mode == "finetune" and asked.lr is None  # the learner's options: untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        learn.config.lr = 0.1  # type: ignore[misc]
    meta = json.loads((learn.save(tmp_path / "run") / "graft.json").read_text())
    assert meta["config"]["lr"] == "auto" and meta["resolved"]["lr"] == ran.lr
    loaded = load_learner(tmp_path / "run", device="cpu")
    assert loaded.config == learn.config and loaded.resolved_config == ran
    assert loaded.run_dir == tmp_path / "run"


def test_a_run_saved_before_resolved_was_stored_still_loads(data, tmp_path):
    """Older graft.json files hold only ``config`` (then the resolved one): it serves as both."""
    learn = Learner(ImageData.from_folder(data), "tf_efficientnet_lite0", input_size=32, seed=0, workers=0)
    learn.fit(mode="features", epochs=1, batch_size=8, lr=0.02, augment=False, log=lambda _: None)
    run = learn.save(tmp_path / "run")
    meta = json.loads((run / "graft.json").read_text())
    meta["config"] = meta.pop("resolved")
    (run / "graft.json").write_text(json.dumps(meta))
    loaded = load_learner(run, device="cpu")
    assert loaded.config.epochs == 1 and loaded.resolved_config.freeze_epochs == 0
    assert loaded.evaluate(data, split="val").n == 9


def test_inference_settings_are_arguments_not_config_writes(data, tmp_path):
    learn = Learner(ImageData.from_folder(data), "tf_efficientnet_lite0", input_size=32, seed=0, workers=0)
    before = learn.config
    paths, probs = learn.predict_probs(data / "val", batch_size=3, workers=0, precision="fp32")
    assert len(paths) == 9 and probs.shape == (9, 3)
    result = learn.evaluate(split="val", batch_size=4, workers=0, precision="fp32")
    assert result.n == 9 and result.undecodable == 0 and learn.config is before
    with pytest.raises(GraftError, match="batch size must be a whole number"):
        learn.predict(data / "val", batch_size=0)
    with pytest.raises(GraftError, match="workers must be a whole number"):
        learn.evaluate(split="val", workers=-1)


def test_fit_hands_callbacks_loss_and_metrics_to_the_engine(data):
    from graft.engine.callbacks import Callback

    class Epochs(Callback):
        def __init__(self) -> None:
            self.seen: list[int] = []

        def after_epoch(self, trainer, row: dict) -> None:
            self.seen.append(row["epoch"])

    losses: list[float] = []

    def loss(logits, targets):
        value = torch.nn.functional.cross_entropy(logits, targets)
        losses.append(float(value.detach()))
        return value

    def top1(logits, targets) -> float:
        return float((logits.argmax(1) == targets).float().mean())

    learn = Learner(ImageData.from_folder(data), "tf_efficientnet_lite0", input_size=32, seed=0, workers=0)
    epochs = Epochs()
    history = learn.fit(
        mode="features", epochs=2, batch_size=8, lr=0.02, augment=False, log=lambda _: None,
        callbacks=[epochs], loss=loss, metrics={"top1": top1},
    )  # fmt: skip
    assert epochs.seen == [1, 2] and losses
    # val_acc is an exact fraction; the metric above a float32 mean of the same answers
    assert [row["val_top1"] for row in history] == pytest.approx([row["val_acc"] for row in history])
