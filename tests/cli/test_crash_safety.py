"""Work is never lost: checkpoints, a NaN stop, untrusted weights, unwritable and full disks."""

from __future__ import annotations

import json
import math
import os
import pickle
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from graft.cli.main import main
from graft.data import ImageData
from graft.engine.checkpoint import CHECKPOINT_FILE, read_checkpoint
from graft.learner.learner import Learner, load_learner
from tests.cli.test_cli import FAST
from tests.conftest import make_image_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "data"
    make_image_folder(root, {"red": 10, "green": 10, "blue": 10}, seed=3)
    return root


def test_a_checkpoint_after_every_epoch_then_removed(data: Path, tmp_path: Path, monkeypatch) -> None:
    """Each epoch replaces the checkpoint (atomically); the finished run drops it."""
    seen: list[int] = []
    from graft.engine import trainer as fit_module

    real = fit_module.save_checkpoint

    def spy(run_dir, progress, *args, **kwargs):
        ok = real(run_dir, progress, *args, **kwargs)
        with safe_open(str(Path(run_dir) / CHECKPOINT_FILE), framework="pt") as f:
            seen.append(json.loads(f.metadata()["graft"])["progress"]["epoch"])
        assert not list(Path(run_dir).glob(".*.tmp"))  # the temporary file was renamed into place
        return ok

    monkeypatch.setattr(fit_module, "save_checkpoint", spy)
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), *FAST, "--no-report"]) == 0
    assert seen == [1, 2, 3, 4, 5, 6]
    assert not (out / CHECKPOINT_FILE).exists()


def test_checkpoint_holds_what_a_resume_needs(data: Path, tmp_path: Path) -> None:
    images = ImageData.from_folder(data, valid_split=0.3)
    learn = Learner(images, input_size=64)
    learn.fit(mode="features", epochs=2, batch_size=8, workers=0, checkpoint=tmp_path)
    ck = read_checkpoint(tmp_path)
    assert ck.progress.epoch == 2 and ck.progress.phase == 1  # the only phase is over
    assert ck.meta["config"]["epochs"] == 2 and ck.meta["classes"] == images.classes
    state = learn.model.state_dict()
    assert ck.model.keys() == state.keys()
    assert "rng.torch" not in ck.model and ck.rng["torch"].dtype == torch.uint8


def test_nan_loss_stops_and_keeps_the_best_epoch(data: Path, tmp_path: Path) -> None:
    images = ImageData.from_folder(data, valid_split=0.3)
    learn = Learner(images, input_size=64)
    calls = {"n": 0}
    steps_per_epoch = math.ceil(len(images.splits["train"]) / 8)

    def blow_up(module, args, out):  # the head's output turns to NaN in the second epoch
        if module.training:
            calls["n"] += 1
            if calls["n"] > steps_per_epoch:
                return out * float("nan")
        return out

    learn.model.get_submodule(learn.spec.head_names[0]).register_forward_hook(blow_up)
    learn.fit(mode="features", epochs=4, batch_size=8, workers=0)
    assert learn.metrics["stopped"].startswith("loss became nan during epoch 2 (frozen); lower --lr")
    assert learn.metrics["best_epoch"] == 1 and len(learn.history) == 1
    learn.save(tmp_path / "run")
    probs = load_learner(tmp_path / "run").predict_probs(data)[1]
    assert probs.shape == (30, 3) and torch.isfinite(torch.from_numpy(probs)).all()


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_as_weights_is_refused_and_never_runs(data: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "payload-ran"
    weights = tmp_path / "model.pth"
    weights.write_bytes(pickle.dumps({"state_dict": _Exploit(str(marker))}, protocol=2))
    out = tmp_path / "run"
    code = main(
        ["train", str(data), "--arch", "resnet18", "--weights", str(weights), "--out", str(out), *FAST]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("graft: error:") and "refusing" in err
    assert not marker.exists()
    assert not out.exists()


def test_an_unwritable_output_folder_fails_before_training(data: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run folder's parent should be")
    assert main(["train", str(data), "--out", str(blocker / "run"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("graft: error: cannot write to") and len(err.strip().splitlines()) == 1


def _small_disk(limit: int):
    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG, as a full disk does
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_files


def test_a_full_disk_is_one_clear_line_and_leaves_no_partial_file(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "graft", "train", str(data), "--out", str(out), *FAST, "--no-report"],
        capture_output=True,
        text=True,
        preexec_fn=_small_disk(2_000_000),  # the weights (13 MB) do not fit; the feature cache does
        env={**os.environ, "GRAFT_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 2, proc.stderr
    assert "could not write the checkpoint" in proc.stderr and "training goes on" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("graft: error: cannot write run folder") and "File too large" in last
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == []  # no half-written weights, no temporary files
