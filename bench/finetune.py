"""Fine-tuning at the price of a frozen head: graft's default recipe (the top stages trained on
cached activations of the frozen prefix) against a full unfreeze on the images, in one run.

For each dataset (default: ../shared/datasets/flowers5 and malaria_subset), two cold runs (each
with an empty feature cache) as a user types them:

1. ``graft train DATA --unfreeze all``: the frozen head, then every body block unfrozen and
   trained on the images (the default recipe before cached-prefix fine-tuning);
2. ``graft train DATA``: the frozen head, then the last stage trained on cached activations;
3. the same with ``--cache-views 2`` (two seeded augmented views per training image cached,
   one drawn per epoch, instead of the eval view alone).

Both run the same frozen epochs on the same split and keep the epoch of best val accuracy. It
prints each run's val accuracy (and images right), the feature extraction seconds (run 2's also
caches the activations), the unfrozen epochs' seconds, the fine-tuning cost (unfrozen epochs plus
the extra extraction time of caching activations), wall time and peak RSS, then the ratios.
Not a test: it prints measurements, it asserts nothing.

Usage: python bench/finetune.py [--data DIR ...] [--skip-full] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import epoch_seconds, graft_cmd, graft_version, machine_info, timed

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
DEFAULT_DATA = [SHARED / "flowers5" / "flowers", SHARED / "malaria_subset"]
EXTRACTION_S = re.compile(r"features of the frozen body: .*\((\d+\.\d+) s;")
VAL_COUNT = re.compile(r"^total\s+(\d+)\s+(\d+)", re.MULTILINE)
RECIPES = {
    "full unfreeze (images)": ["--unfreeze", "all"],
    "default (cached prefix)": [],
    "default, 2 augmented views cached": ["--cache-views", "2"],
}


def run_recipe(data: Path, tmp: Path, name: str, extra: list[str]) -> dict:
    """One cold ``graft train`` and what its log, history and graft.json say."""
    slug = f"{data.name}-{list(RECIPES).index(name)}"
    env = {**os.environ, "GRAFT_CACHE_DIR": str(tmp / f"cache-{slug}"), "GRAFT_OFFLINE": "1"}
    out = tmp / f"run-{slug}"
    r = timed(graft_cmd("train", str(data), *extra, "--no-report", "--out", str(out), "--overwrite"), env)
    metrics = json.loads((out / "graft.json").read_text())["metrics"]
    seconds = epoch_seconds(out / "history.csv")
    extraction = EXTRACTION_S.search(r["stdout"])
    val = VAL_COUNT.search(r["stdout"])
    n_val = int(val.group(2)) if val else 0
    return {
        "recipe": name,
        "val_acc": metrics.get("val_acc"),
        "val_right": round(metrics["val_acc"] * n_val) if n_val and metrics.get("val_acc") != "" else None,
        "val_n": n_val,
        "extraction_s": float(extraction.group(1)) if extraction else 0.0,
        "frozen_s": seconds["frozen"],
        "unfrozen_s": seconds["unfrozen"],
        "wall_s": r["wall_s"],
        "peak_rss_mb": r["peak_rss_mb"],
        "lines": [
            ln for ln in r["stdout"].splitlines() if ln.startswith(("estimate", "activations", "note:"))
        ],
    }


def print_dataset(data: Path, rows: list[dict]) -> None:
    """The table of one dataset, and the ratio of fine-tuning costs."""
    print(f"\n{data}")
    print(
        "| recipe | val accuracy | extraction s | unfrozen epochs s | fine-tuning s | wall s | peak RSS MB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = rows[0]
    for r in rows:
        extra = max(0.0, r["extraction_s"] - base["extraction_s"]) if r is not base else 0.0
        r["finetune_s"] = r["unfrozen_s"] + extra
        right = f" ({r['val_right']}/{r['val_n']})" if r["val_right"] is not None else ""
        print(
            f"| {r['recipe']} | {r['val_acc']:.4f}{right} | {r['extraction_s']:.1f} | {r['unfrozen_s']:.1f} "
            f"| {r['finetune_s']:.1f} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    for r in rows[1:]:
        if not r["unfrozen_s"]:
            print(f"{r['recipe']}: no unfrozen epochs (the frozen head reached --unfreeze-below)")
        elif base["unfrozen_s"]:
            print(
                f"fine-tuning {base['finetune_s'] / r['finetune_s']:.1f}x faster "
                f"({base['unfrozen_s'] / max(r['unfrozen_s'], 1e-9):.1f}x on the unfrozen epochs alone); "
                f"val images right: {r['val_right']} vs {base['val_right']}"
            )
    for r in rows:
        for line in r["lines"]:
            print(f"  [{r['recipe']}] {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA)
    parser.add_argument("--skip-full", action="store_true", help="run only the default recipe")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}; graft {graft_version()}")
    results = {"machine": info, "datasets": {}}
    recipes = {k: v for k, v in RECIPES.items() if not (args.skip_full and "all" in v)}
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            rows = [run_recipe(data, Path(tmp), name, extra) for name, extra in recipes.items()]
            print_dataset(data, rows)
            results["datasets"][str(data)] = rows
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
