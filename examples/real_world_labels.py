"""Recipe 7: real-world labels. Multi-label collages and a 1:20 imbalanced dataset, end to end.

Builds two datasets from real photos (``label_datasets.py``): 2 x 2 collages of flowers5 photos
labeled with the species they show (some one species, some none), and a copy of hymenoptera whose
bees keep 1/20 of the ants' training images (val untouched). Trains the collages as a multi-label
run (one sigmoid per class, per-class thresholds chosen on val; a fifth of the collages held out
as a test split) and the imbalanced copy with ``--balance auto`` and ``--balance none``, then
prints each run's scores and wall time.

    python examples/real_world_labels.py ../shared/datasets --out runs/labels
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import graft
from graft import TrainConfig, load_learner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_datasets import make_collages, make_imbalanced

SCORES = ("accuracy", "balanced_accuracy", "macro_f1", "micro_f1", "mean_ap")


def train(name: str, cfg: TrainConfig, data: Path, splits: tuple[str, ...] = ("val",)) -> list[dict]:
    """One run as ``graft train`` makes it; the scores of the weights and thresholds it kept on
    each split (val chose them: a test split, when there is one, is the honest measure)."""
    t0 = time.perf_counter()
    graft.train(
        cfg, log=lambda line: print(f"[{name}] {line}") if line.startswith(("val:", "decision")) else None
    )
    seconds = time.perf_counter() - t0
    learn = load_learner(cfg.out)
    rows = []
    for split in splits:
        result = learn.evaluate(data, split)
        scores = {key: getattr(result, key, None) for key in SCORES}
        rows.append({"run": f"{name}, {split}", "n": result.n, "seconds": seconds, **scores})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", type=Path, help="folder holding flowers5/ and hymenoptera/")
    parser.add_argument("--out", type=Path, default=Path("runs/labels"), help="datasets and runs go here")
    parser.add_argument("--collages", type=int, default=400, help="collages to build")
    parser.add_argument("--input-size", type=int, default=None, help="default: the model's own")
    parser.add_argument("--epochs", type=int, default=None, help="default: graft train's")
    parser.add_argument("--freeze-epochs", type=int, default=None, help="default: graft train's")
    args = parser.parse_args()
    short = {"input_size": args.input_size, "epochs": args.epochs, "freeze_epochs": args.freeze_epochs}
    options = {k: v for k, v in short.items() if v is not None} | {"report": False}

    collage = args.out / "collage"
    make_collages(collage, args.collages, args.datasets / "flowers5" / "flowers")
    run = TrainConfig(
        data=str(collage), labels="labels.csv", test_split=0.2, out=str(args.out / "run-collage"), **options
    )
    rows = train(f"{args.collages} collages", run, collage, ("val", "test"))
    learn = load_learner(run.out)
    for p in learn.predict(sorted((collage / "images").iterdir())[:3]):
        shown = " ".join(f"{c} {q:.2f}" for c, q in zip(p.labels, p.probs, strict=True))
        print(f"{p.path.name}: {shown or '(none)'}")

    skewed = make_imbalanced(args.out / "hym20", "bees", args.datasets / "hymenoptera", ratio=20)
    for balance in ("auto", "none"):
        run = TrainConfig(data=str(skewed), out=str(args.out / f"run-{balance}"), balance=balance, **options)
        rows += train(f"hymenoptera 1:20, --balance {balance}", run, skewed)

    print(f"\n{'run':<40} {'n':>5} " + " ".join(f"{c[:12]:>12}" for c in SCORES) + f" {'seconds':>8}")
    for r in rows:
        cells = " ".join(f"{r[c]:12.4f}" if isinstance(r[c], float) else f"{'-':>12}" for c in SCORES)
        print(f"{r['run']:<40} {r['n']:>5} {cells} {r['seconds']:8.1f}")
    points = 100 * (rows[-2]["balanced_accuracy"] - rows[-1]["balanced_accuracy"])
    print(f"--balance auto vs none: {points:+.1f} points of val balanced accuracy")


if __name__ == "__main__":
    main()
