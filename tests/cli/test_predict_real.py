"""graft predict over all of flowers5 (4,317 photos) as a user runs it: two shards in parallel plus
merge-predictions, and a run killed with SIGKILL half-way then resumed, give byte for byte the CSV
of one uninterrupted run (slow)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import shared_dataset

pytestmark = pytest.mark.slow

# One thread per process, so the two shards share the machine's cores without oversubscribing them.
# Every run here uses the same setting: the thread count changes the last bits of CPU convolutions.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def graft(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "graft", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate()
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{out}\n{err}"
    return out


def lines(path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def flowers_run(tmp_path_factory):
    """A features-mode run at 64 px trained on 20 photos per class (prediction cost is what matters)."""
    flowers = shared_dataset("flowers5") / "flowers"
    root = tmp_path_factory.mktemp("flowers-predict")
    for folder in sorted(p for p in flowers.iterdir() if p.is_dir()):
        (root / "small" / folder.name).mkdir(parents=True)
        for photo in sorted(folder.glob("*.jpg"))[:20]:
            shutil.copy(photo, root / "small" / folder.name / photo.name)
    finish(graft("train", str(root / "small"), "--out", str(root / "run"), "--input-size", "64",
                 "--mode", "features", "--no-report"))  # fmt: skip
    return flowers, root / "run", root


def test_shards_and_a_killed_then_resumed_run_equal_one_run(flowers_run):
    flowers, run, root = flowers_run
    timings = {}
    t0 = time.perf_counter()
    out = finish(graft("predict", str(run), str(flowers), "--csv", str(root / "full.csv")))
    timings["unsharded"] = time.perf_counter() - t0
    assert "wrote 4317 predictions" in out
    assert lines(root / "full.csv") == 1 + 4317

    t0 = time.perf_counter()
    parts = [root / "part0.csv", root / "part1.csv"]
    shards = [
        graft("predict", str(run), str(flowers), "--csv", str(p), "--shard", f"{i}/2")
        for i, p in enumerate(parts)
    ]
    for proc in shards:
        finish(proc)
    timings["2 shards in parallel"] = time.perf_counter() - t0
    rows = [lines(p) - 1 for p in parts]
    assert sum(rows) == 4317 and min(rows) > 1500
    finish(
        graft(
            "merge-predictions",
            str(root / "part0.csv"),
            str(root / "part1.csv"),
            "--out",
            str(root / "merged.csv"),
        )
    )
    assert (root / "merged.csv").read_bytes() == (root / "full.csv").read_bytes()

    killed = root / "killed.csv"
    proc = graft("predict", str(run), str(flowers), "--csv", str(killed), "--chunk-size", "256")
    t0 = time.perf_counter()
    while lines(killed) < 1 + 2048 and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)  # into the next chunk, whose rows are lost
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    timings["killed run"] = time.perf_counter() - t0
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = lines(killed) - 1
    assert 2048 <= done < 4317

    t0 = time.perf_counter()
    out = finish(graft("predict", str(run), str(flowers), "--csv", str(killed), "--resume"))
    timings["resume"] = time.perf_counter() - t0
    assert f"wrote {4317 - done} predictions to {killed} ({done} already there)" in out
    assert killed.read_bytes() == (root / "full.csv").read_bytes()
    print("  ".join(f"{k}: {v:.1f} s" for k, v in timings.items()), f"(killed after {done} rows)")
