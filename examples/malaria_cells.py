"""Recipe 1: malaria cells, a custom head on a frozen ImageNet body.

The classic malaria-cell tutorial: densenet121 with its classifier replaced by
Linear(features, 460) - ReLU - Dropout(0.4) - Linear(460, 2), Adam on the head only, the epoch with
the lowest validation loss kept, a test report and a few predictions per class. densenet121's
weights are used when they are on this machine; otherwise the bundled EfficientNet-Lite0 body.

    python examples/malaria_cells.py ../shared/datasets/malaria_subset --out runs/malaria
"""

from __future__ import annotations

import argparse
from pathlib import Path

from graft import ImageData, Learner
from graft.models import weights_or_fallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="class folders (infected/, NotInfected/ ...)")
    parser.add_argument("--out", default="runs/malaria", help="run folder to write")
    parser.add_argument("--arch", default="densenet121", help="body to use when its weights are cached")
    parser.add_argument("--fallback", default="tf_efficientnet_lite0", help="body otherwise")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak lr (one-cycle), Adam's usual 1e-3")
    parser.add_argument("--input-size", type=int, default=None, help="default: the body's own")
    parser.add_argument("--shown", type=int, default=3, help="test predictions shown per class")
    args = parser.parse_args()

    arch, weights, why = weights_or_fallback(args.arch, args.fallback)  # downloads unless GRAFT_OFFLINE=1
    if why:
        print(f"{args.arch}: no ImageNet weights ({why}); using {arch}")
    print(f"body: {arch}, ImageNet weights from {weights}")

    # 70 / 20 / 10, stratified and seeded; the exact split is saved with the run.
    data = ImageData.from_folder(args.data, valid_split=0.2, test_split=0.1, seed=0)
    print(data.summary())
    learn = Learner(data, arch, head=460, head_dropout=0.4, input_size=args.input_size)
    learn.fit(mode="features", optimizer="adam", lr=args.lr, epochs=args.epochs, monitor="val_loss")

    interp = learn.interpret(split="test")
    result = interp.result
    print(f"Test Loss: {result.loss:.4f}  Test Accuracy: {result.accuracy:.0%} ({result.correct}/{result.n})")
    print(result.format())
    print(f"\n{args.shown} test images per class (seeded):")
    for row in interp.sample(per_class=args.shown):
        mark = "ok " if row["pred"] == row["true"] else "BAD"
        name = Path(row["path"]).name
        print(f"  {mark} {name:<40} true {row['true']:<12} pred {row['pred']} ({row['prob']:.3f})")

    run = learn.save(args.out)
    interp.plot_predictions(per_class=args.shown, cols=args.shown).savefig(run / "test_predictions.png")
    print(f"saved run to {run}; test grid in {run / 'test_predictions.png'}")


if __name__ == "__main__":
    main()
