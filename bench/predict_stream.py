"""``graft predict`` on a large folder: one run, two shards (one after the other and in parallel)
plus ``graft merge-predictions``, and a run killed with SIGKILL half-way then resumed.

Prints wall-clock seconds, rows, and whether every CSV is byte-identical to the one of the
uninterrupted, unsharded run made with the same thread count.

    python bench/predict_stream.py --run runs/flowers64  # default --data: ../shared/datasets/flowers5/flowers
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "flowers5" / "flowers"


def graft(*args: str, threads: int | None = None) -> subprocess.Popen:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    return subprocess.Popen(
        [sys.executable, "-m", "graft", *args], env=env, stdout=subprocess.PIPE, text=True
    )


def wait(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(proc.args)} exited {proc.returncode}")


def rows(path: Path) -> int:
    return path.read_bytes().count(b"\n") - 1 if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder (or .onnx file) to predict with")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder to predict (default: flowers5)")
    args = parser.parse_args()
    base = ["predict", args.run, args.data]
    cores = len(os.sched_getaffinity(0))
    out = Path(tempfile.mkdtemp(prefix="graft-predict-stream-"))

    def timed(label: str, *groups: list[str], threads: int | None = None) -> None:
        t0 = time.perf_counter()
        wait(*(graft(*argv, threads=threads) for argv in groups))
        print(f"{label:<48} {time.perf_counter() - t0:6.1f} s")

    def same(path: Path, reference: Path) -> str:
        return "identical" if path.read_bytes() == reference.read_bytes() else "DIFFERENT"

    full = out / "full.csv"
    timed("unsharded", [*base, "--csv", str(full)])
    print(f"  {rows(full)} rows")
    parts = [out / "seq0.csv", out / "seq1.csv"]
    for i, part in enumerate(parts):
        timed(f"shard {i}/2 alone", [*base, "--csv", str(part), "--shard", f"{i}/2"])
        print(f"  {rows(part)} rows")
    wait(graft("merge-predictions", *map(str, parts), "--out", str(out / "seq.csv")))
    print(f"  merged: {rows(out / 'seq.csv')} rows, {same(out / 'seq.csv', full)} to unsharded")

    parts = [out / "over0.csv", out / "over1.csv"]
    shards = ([*base, "--csv", str(p), "--shard", f"{i}/2"] for i, p in enumerate(parts))
    timed("2 shards in parallel, default threads each", *shards)
    wait(graft("merge-predictions", *map(str, parts), "--out", str(out / "over.csv")))
    print(f"  merged: {rows(out / 'over.csv')} rows, {same(out / 'over.csv', full)} to unsharded")

    threads = max(1, cores // 2)
    full_n = out / f"full-{threads}.csv"
    timed(f"unsharded, OMP_NUM_THREADS={threads}", [*base, "--csv", str(full_n)], threads=threads)
    parts = [out / "par0.csv", out / "par1.csv"]
    shards = ([*base, "--csv", str(p), "--shard", f"{i}/2"] for i, p in enumerate(parts))
    timed(f"2 shards in parallel, OMP_NUM_THREADS={threads} each", *shards, threads=threads)
    wait(graft("merge-predictions", *map(str, parts), "--out", str(out / "par.csv")))
    print(
        f"  merged: {rows(out / 'par.csv')} rows, {same(out / 'par.csv', full_n)} "
        "to unsharded with the same threads"
    )

    killed = out / "killed.csv"
    total = rows(full)
    t0 = time.perf_counter()
    proc = graft(*base, "--csv", str(killed))
    while rows(killed) < total // 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    print(
        f"{'killed half-way (SIGKILL)':<48} {time.perf_counter() - t0:6.1f} s  ({rows(killed)} rows on disk)"
    )
    timed("--resume", [*base, "--csv", str(killed), "--resume"])
    print(f"  {rows(killed)} rows, {same(killed, full)} to unsharded")
    print(f"CSVs in {out}")


if __name__ == "__main__":
    main()
