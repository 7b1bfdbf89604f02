"""``graft train --overwrite`` is as crash-safe as a fresh run (issue 18, item 3).

Real ``graft train`` processes are killed with SIGKILL at chosen moments. Whenever it happens,
the run folder holds the old run whole, or a new run that ``--resume`` finishes; never old files
beside new weights; and a finished run holds no temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from graft.cli.main import main
from graft.engine.checkpoint import CHECKPOINT_FILE
from graft.infrastructure.fileio import atomic_write, is_temp_file
from graft.learner.bundle import load_bundle
from tests.cli.test_cli import BUNDLE, REPORT
from tests.cli.test_resume import _checkpoint_epoch
from tests.conftest import make_image_folder

# Epochs on cached features: quick, each followed by a 13 MB checkpoint. The new run differs
# from the old one in its epochs and learning rate.
BASE = ["--input-size", "64", "--mode", "features", "--batch-size", "6", "--no-augment", "--workers", "0",
        "--device", "cpu"]  # fmt: skip
OLD = [*BASE, "--epochs", "2", "--lr", "0.02"]
NEW = [*BASE, "--epochs", "12", "--lr", "0.03"]

Moment = Callable[[Path, int], bool]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("overwrite") / "data", {"red": 8, "green": 8, "blue": 8})


@pytest.fixture(scope="module")
def old_run(data: Path) -> Path:
    """A finished run with its report, and an ONNX export beside it (as ``graft export`` leaves)."""
    out = data.parent / "old"
    assert main(["train", str(data), "--out", str(out), *OLD]) == 0
    (out / "model.onnx").write_bytes(b"an export of the old model")
    return out


@pytest.fixture
def run(old_run: Path, tmp_path: Path) -> Path:
    """A copy of the old run, its files' times kept (so new files tell themselves apart)."""
    return Path(shutil.copytree(old_run, tmp_path / "run"))


def _graft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graft", *args], capture_output=True, text=True)


def _kill_when(argv: list[str], out: Path, moment: Moment) -> None:
    """Start ``graft train ARGV`` and SIGKILL it as soon as ``moment(out, start_ns)`` holds."""
    start = time.time_ns()
    child = subprocess.Popen(
        [sys.executable, "-m", "graft", "train", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while not moment(out, start) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it ended on its own
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the run ended before the moment to kill it came"


def _temp(name: str) -> Moment:
    """The moment a temporary file of ``name`` is being written."""
    return lambda out, _: any(is_temp_file(p) and p.startswith(f".{name}.") for p in _names(out))


def _written(name: str) -> Moment:
    """The moment the new run's ``name`` is in place."""

    def moment(out: Path, start: int) -> bool:
        try:
            return (out / name).stat().st_mtime_ns > start
        except FileNotFoundError:
            return False

    return moment


def _first_checkpoint_write(out: Path, start: int) -> bool:
    return _temp(CHECKPOINT_FILE)(out, start) and not (out / CHECKPOINT_FILE).exists()


def _later_checkpoint_write(out: Path, start: int) -> bool:
    return _checkpoint_epoch(out) >= 2 and _temp(CHECKPOINT_FILE)(out, start)


def _names(out: Path) -> set[str]:
    try:
        return set(os.listdir(out))
    except FileNotFoundError:
        return set()


def _assert_new_run(out: Path, report: bool) -> None:
    """``out`` holds the finished new run and nothing else: no old file, no temporary file."""
    load_bundle(out)  # graft.json vouches for the weights beside it
    config = json.loads((out / "graft.json").read_text())["config"]
    assert (config["epochs"], config["lr"]) == (12, 0.03)
    assert sorted(_names(out)) == sorted(BUNDLE + (REPORT if report else []))


MOMENTS = {
    "after-an-epoch": (lambda out, _: _checkpoint_epoch(out) >= 2, False),
    "mid-checkpoint-write": (_later_checkpoint_write, False),
    "mid-weights-write": (_temp("model.safetensors"), False),
    "weights-written-graft-json-not": (_written("model.safetensors"), False),
    "mid-report": (_written("graft.json"), True),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_killed_overwrite_is_resumable_and_never_mixes_runs(moment: str, run: Path, data: Path) -> None:
    """Sub-point 1: killed at any moment after its first checkpoint, an --overwrite is resumed
    (the old code refused: 'holds a finished run'), and no graft.json vouches for other weights."""
    when, report = MOMENTS[moment]
    argv = [str(data), "--out", str(run), *NEW, "--overwrite"] + ([] if report else ["--no-report"])
    _kill_when(argv, run, when)
    names = _names(run)
    if "graft.json" in names:
        load_bundle(run)  # the old run, or the new one: whole either way (no sha256 mismatch)
    assert CHECKPOINT_FILE in names
    if moment == "after-an-epoch":
        refused = _graft("train", str(data), "--out", str(run), *NEW)
        assert refused.returncode == 2 and f"graft train --resume {run}" in refused.stderr
    resumed = _graft("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    _assert_new_run(run, report)


def test_killed_before_its_first_checkpoint_the_old_run_is_whole(run: Path, data: Path) -> None:
    """Until the new run can be resumed, the old one stays as it was (its report too): here it is
    killed while its first checkpoint is being written."""
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    argv = [str(data), "--out", str(run), *NEW, "--overwrite"]
    _kill_when(argv, run, _first_checkpoint_write)
    assert {p.name: p.read_bytes() for p in run.iterdir() if not is_temp_file(p.name)} == before
    load_bundle(run)


def test_overwrite_without_a_report_leaves_no_file_of_the_old_run(run: Path, data: Path) -> None:
    """Sub-point 2: the old report.html, its PNGs and the old ONNX export do not survive beside the
    new model (the old code left them all)."""
    (run / ".model.safetensors.k1ll3d00.tmp").write_bytes(b"left by a killed save")
    assert main(["train", str(data), "--out", str(run), *NEW, "--overwrite", "--no-report"]) == 0
    _assert_new_run(run, report=False)


@pytest.mark.slow
def test_a_killed_run_leaves_no_temporary_file_once_finished(data: Path, tmp_path: Path) -> None:
    """Sub-point 3: a run killed mid-write leaves a temporary file; the run that goes on from
    there (a plain rerun, then a resume) finishes without any (the old code refused the rerun:
    'holds files that are not a graft run', and kept the file through the resume)."""
    out = tmp_path / "run"
    argv = [str(data), "--out", str(out), *NEW, "--no-report"]
    _kill_when(argv, out, _first_checkpoint_write)
    assert [p for p in _names(out) if not is_temp_file(p)] == []  # killed during the first checkpoint
    _kill_when(argv, out, lambda o, _: _checkpoint_epoch(o) >= 2 and _temp(CHECKPOINT_FILE)(o, 0))
    assert any(is_temp_file(p) for p in _names(out)) and CHECKPOINT_FILE in _names(out)
    resumed = _graft("train", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    _assert_new_run(out, report=False)


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    retracted: list[str] = []

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, fail, before_replace=lambda: retracted.append("graft.json"))
    assert retracted == [] and sorted(_names(tmp_path)) == ["model.safetensors"]
    assert target.read_bytes() == b"old"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"), before_replace=lambda: retracted.append("x"))
    assert retracted == ["x"] and target.read_bytes() == b"new" and _names(tmp_path) == {"model.safetensors"}


@pytest.mark.parametrize(
    ("name", "temp"),
    [(".model.safetensors.a1b2c3d4.tmp", True), (".checkpoint.safetensors.x_y9z8w7.tmp", True),
     (".history.csv.abcdefgh.tmp", True), ("model.safetensors", False), (".notes.tmp", False),
     ("my.abcdefgh.tmp", False)],
)  # fmt: skip
def test_temporary_files_are_told_by_their_name(name: str, temp: bool) -> None:
    assert is_temp_file(name) is temp
