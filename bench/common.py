"""What the benchmarks share: running graft as a user would (a subprocess, its peak memory), a
run's epoch seconds, and the machine it ran on. Imported by the scripts in this folder."""

from __future__ import annotations

import csv
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``; wall seconds, exit code, peak RSS (MB) of the process, and its stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out}


def graft_cmd(*args: str) -> list[str]:
    """The command line of ``graft ARGS`` in this interpreter."""
    return [sys.executable, "-m", "graft", *args]


def epoch_seconds(history: Path) -> dict[str, float]:
    """Seconds of the frozen and of the unfrozen epochs in a run's ``history.csv``."""
    seconds = {"frozen": 0.0, "unfrozen": 0.0}
    with history.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("phase") in seconds and row.get("seconds"):
                seconds[row["phase"]] += float(row["seconds"])
    return seconds


def machine_info() -> dict[str, str | int]:
    """The CPU's name, its core count, the platform and torch's version."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "platform": platform.platform(),
        "torch": torch.__version__,
    }


def graft_version() -> str:
    """``git describe --always --dirty`` of this checkout."""
    cmd = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
