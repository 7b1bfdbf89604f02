"""Real-world labels, measured: multi-label collages of flowers5 photos, and a 1:20 imbalanced
hymenoptera, each trained by ``graft.train`` as ``graft train`` would (default flags unless a row
says otherwise), on datasets built from ``../shared/datasets`` the way the tests build them
(``tests/labels_data.py``).

Prints one table: the val scores of the epoch kept and the wall time of each run. The imbalance
rows differ only in ``--balance``: the points of balanced accuracy between them are measured in
this one run, on this machine. Not a test: it prints measurements, it asserts nothing.

Usage: python bench/labels.py [--collages 400] [--only collage|imbalance] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import graft  # noqa: E402
from graft import TrainConfig, load_learner  # noqa: E402
from tests.labels_data import FLOWERS, HYMENOPTERA, make_collages, make_imbalanced  # noqa: E402


def _run(name: str, cfg: TrainConfig, data: Path) -> dict:
    t0 = time.perf_counter()
    graft.train(
        cfg, log=lambda line: print(f"  [{name}] {line}") if line.startswith(("val:", "decision")) else None
    )
    seconds = time.perf_counter() - t0
    result = load_learner(cfg.out).evaluate(data, "val")
    row = {"run": name, "seconds": seconds, "n": result.n}
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "micro_f1", "mean_ap"):
        value = getattr(result, key, None)
        row[key] = value if isinstance(value, float) else None
    return row


def collage_rows(work: Path, n: int) -> list[dict]:
    data = work / "collage"
    make_collages(data, n)
    cfg = TrainConfig(data=str(data), labels="labels.csv", out=str(work / "run-collage"), report=False)
    return [_run(f"collage x{n}, default flags", cfg, data)]


def imbalance_rows(work: Path) -> list[dict]:
    data = make_imbalanced(work / "hym20", "bees", 20, source=HYMENOPTERA)
    rows = []
    for balance in ("auto", "none", "sampler"):
        cfg = TrainConfig(data=str(data), out=str(work / f"run-{balance}"), balance=balance, report=False)
        rows.append(_run(f"hymenoptera 1:20, --balance {balance}", cfg, data))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collages", type=int, default=400)
    parser.add_argument("--only", choices=("collage", "imbalance"))
    parser.add_argument("--keep", help="build the datasets and runs here (default: a temporary folder)")
    args = parser.parse_args()
    if not FLOWERS.is_dir() or not HYMENOPTERA.is_dir():
        sys.exit("../shared/datasets (flowers5, hymenoptera) not found beside the checkout")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        rows = []
        if args.only != "imbalance":
            rows += collage_rows(work, args.collages)
        if args.only != "collage":
            rows += imbalance_rows(work)
    cols = ("accuracy", "balanced_accuracy", "macro_f1", "micro_f1", "mean_ap")
    print(f"\n{'run':<42} {'val n':>5} " + " ".join(f"{c[:12]:>12}" for c in cols) + f" {'seconds':>8}")
    for r in rows:
        cells = " ".join(f"{r[c]:12.4f}" if r[c] is not None else f"{'-':>12}" for c in cols)
        print(f"{r['run']:<42} {r['n']:>5} {cells} {r['seconds']:8.1f}")
    by = {r["run"]: r for r in rows}
    auto, none = by.get("hymenoptera 1:20, --balance auto"), by.get("hymenoptera 1:20, --balance none")
    if auto and none:
        points = 100 * (auto["balanced_accuracy"] - none["balanced_accuracy"])
        print(f"\n--balance auto vs none: {points:+.1f} points of val balanced accuracy")


if __name__ == "__main__":
    main()
