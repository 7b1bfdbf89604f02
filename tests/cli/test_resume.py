"""Crash safety: ``graft train`` is killed with SIGKILL mid-epoch and ``--resume`` finishes the run
exactly as the uninterrupted run did (real data from ../shared/datasets)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from graft.cli.main import main
from graft.engine.checkpoint import CHECKPOINT_FILE
from graft.infrastructure.fileio import sha256_file
from tests.conftest import shared_dataset

# Every phase that keeps state across epochs: cached-feature epochs (their own shuffle generator),
# then unfrozen epochs on the images (optimizer moments, one-cycle schedule, augmentation, dropout,
# two DataLoader worker processes).
OPTIONS = [
    "--input-size", "64", "--freeze-epochs", "2", "--epochs", "3", "--batch-size", "16",
    "--test-split", "0.1", "--workers", "2", "--device", "cpu", "--no-report",
]  # fmt: skip


def _graft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graft", *args], capture_output=True, text=True)


def _checkpoint_epoch(run: Path) -> int:
    try:
        with safe_open(str(run / CHECKPOINT_FILE), framework="pt") as f:
            return json.loads(f.metadata()["graft"])["progress"]["epoch"]
    except Exception:  # not written yet (or being renamed into place)
        return 0


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_kill_9_then_resume_ends_like_the_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    data = shared_dataset("malaria_subset")
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    proc = _graft("train", str(data), "--out", str(whole), *OPTIONS)
    assert proc.returncode == 0, proc.stderr
    assert not (whole / CHECKPOINT_FILE).exists()  # a finished run drops its checkpoint

    child = subprocess.Popen(
        [sys.executable, "-m", "graft", "train", str(data), "--out", str(killed), *OPTIONS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its DataLoader workers die with it
    )
    deadline = time.monotonic() + 300
    while _checkpoint_epoch(killed) < 3 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)  # in the middle of epoch 4 (the second unfrozen one)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (killed / "graft.json").exists()
    done = _checkpoint_epoch(killed)
    assert 3 <= done < 5

    # A plain rerun into the same folder refuses to clobber the interrupted run.
    proc = _graft("train", str(data), "--out", str(killed), *OPTIONS)
    assert proc.returncode == 2 and "--resume" in proc.stderr

    proc = _graft("train", "--resume", str(killed))
    assert proc.returncode == 0, proc.stderr
    assert f"resuming after epoch {done} of 5" in proc.stdout
    assert not (killed / CHECKPOINT_FILE).exists()

    assert _history(killed) == _history(whole)
    a, b = (json.loads((r / "graft.json").read_text())["metrics"] for r in (whole, killed))
    for key in ("best_epoch", "val_acc", "val_loss", "test_acc", "test_loss", "test_n"):
        assert a[key] == b[key], key
    assert b["resumed_after_epoch"] == done
    assert sha256_file(killed / "model.safetensors") == sha256_file(whole / "model.safetensors")


def test_resume_refuses_other_options_and_finished_runs(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train"]) == 2
    assert "the dataset folder is missing" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    assert "drop --epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(run)]) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
    run.mkdir()
    (run / "graft.json").write_text("{}")
    assert main(["train", "--resume", str(run)]) == 2
    assert "finished run" in capsys.readouterr().err
    (run / "graft.json").unlink()
    (run / CHECKPOINT_FILE).write_bytes(b"\x00" * 100)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not a readable graft checkpoint" in err and "Traceback" not in err
