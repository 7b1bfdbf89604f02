"""The CIFAR-10-from-scratch recipe on tiny generated images: cifar_resnet18, --crop-padding,
--normalize data; then loading, predicting, exporting and resuming the run."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from graft.cli.main import main
from graft.data import ImageData, Preprocessing, channel_stats
from graft.engine import trainer as fit_module
from graft.engine.checkpoint import CHECKPOINT_FILE
from graft.infrastructure.fileio import sha256_file
from graft.learner.learner import load_learner
from tests.conftest import make_image_folder

RECIPE = [
    "--arch", "cifar_resnet18", "--mode", "scratch", "--optimizer", "sgd", "--lr", "0.05",
    "--momentum", "0.9", "--weight-decay", "5e-4", "--crop-padding", "4", "--rotate", "0",
    "--jitter", "0", "--normalize", "data", "--schedule", "cosine", "--batch-size", "8",
    "--valid-split", "0.25", "--workers", "0", "--device", "cpu", "--no-report",
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a busy 2-core machine, two threads made each step 2-3x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar") / "data"
    return make_image_folder(root, {"red": 8, "green": 8, "blue": 8}, size=(36, 32), seed=4)


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cifar-run") / "run"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["train", str(data), "--out", str(out), "--epochs", "1", *RECIPE]) == 0
    return out, buffer.getvalue()


def test_the_run_saves_the_training_images_statistics(run, data: Path) -> None:
    out, log = run
    meta = json.loads((out / "graft.json").read_text())
    assert meta["model"]["source"] == "graft" and meta["model"]["arch"] == "cifar_resnet18"
    cfg = meta["resolved"]  # what ran: mode scratch starts from random weights
    assert (cfg["crop_padding"], cfg["normalize"], cfg["pretrained"]) == (4, "data", False)
    train = ImageData.from_record(meta["split"]["root"], meta["split"]).splits["train"]
    assert len(train) == 18
    base = Preprocessing(input_size=32, crop_pct=1.0)
    mean, std = channel_stats(train, base, workers=0)
    pre = meta["preprocessing"]
    assert pre["mean"] == list(mean) and pre["std"] == list(std)
    assert (pre["input_size"], pre["crop_pct"]) == (32, 1.0)
    # A third of the images is red (220, 40, 40), the others have 40 in red: not CIFAR's numbers.
    assert abs(mean[0] - 300 / 765) < 0.01 and std[0] > 0.3
    shown = "(" + ", ".join(f"{v:.3g}" for v in mean) + ")"
    assert f"model: graft:cifar_resnet18 (random init), input 32px bilinear, mean {shown}" in log
    assert "(of the training images)" in log


def test_the_run_loads_and_predicts(run, data: Path) -> None:
    out, _ = run
    learn = load_learner(out, device="cpu")
    saved = json.loads((out / "graft.json").read_text())["preprocessing"]
    assert learn.preprocessing == Preprocessing.from_dict(saved)
    predictions = learn.predict(data / "red", k=3)
    assert len(predictions) == 8 and set(predictions[0].labels) == {"red", "green", "blue"}


def test_the_run_exports_to_onnx(run, data: Path, tmp_path: Path, capsys) -> None:
    out, _ = run
    target = tmp_path / "m.onnx"
    assert main(["export", str(out), "--out", str(target), "--check", str(data / "blue")]) == 0
    assert "same top-1 on 8/8" in capsys.readouterr().out


def test_an_interrupted_run_resumes_with_its_statistics(data: Path, tmp_path: Path, monkeypatch) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", str(data), "--out", str(whole), "--epochs", "2", *RECIPE]) == 0
    real = fit_module.save_checkpoint

    def stop_after_the_first_epoch(run_dir, progress, *args, **kwargs):
        real(run_dir, progress, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "save_checkpoint", stop_after_the_first_epoch)
    assert main(["train", str(data), "--out", str(cut), "--epochs", "2", *RECIPE]) == 130
    assert (cut / CHECKPOINT_FILE).exists() and not (cut / "graft.json").exists()
    monkeypatch.setattr(fit_module, "save_checkpoint", real)
    assert main(["train", "--resume", str(cut)]) == 0
    a, b = (json.loads((r / "graft.json").read_text()) for r in (whole, cut))
    assert a["preprocessing"] == b["preprocessing"] and b["config"]["normalize"] == "data"
    assert b["metrics"]["resumed_after_epoch"] == 1
    assert sha256_file(cut / "model.safetensors") == sha256_file(whole / "model.safetensors")
