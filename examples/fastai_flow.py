"""Recipe 6: the fastai flow on ants and bees.

fastai's first lesson, step by step: one frozen one-cycle epoch, a look at the top losses and the
confusion matrix, unfreeze, three one-cycle epochs with learning rates from 1e-5 (first body
block) to 3e-4 (head), then the test images' predictions in file order. The test split is made
here from a third of hymenoptera's val images (seeded), linked into OUT/data.

    python examples/fastai_flow.py ../shared/datasets/hymenoptera --out runs/fastai_flow
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

from graft import ImageData, Learner
from graft.models import weights_or_fallback


def make_test_split(src: Path, dst: Path, fraction: float, seed: int) -> None:
    """``dst/train`` as ``src/train``; ``src/val`` divided into ``dst/val`` and ``dst/test`` per class.

    Files are symlinked (absolute targets), so nothing is copied.
    """
    rng = random.Random(seed)
    for split in ("train", "val"):
        for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            files = sorted(f for f in cls.iterdir() if f.is_file())
            test = set(rng.sample(files, round(len(files) * fraction))) if split == "val" else set()
            for f in files:
                target = dst / ("test" if f in test else split) / cls.name / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    os.symlink(f.resolve(), target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="hymenoptera: train/ and val/ with ants/ and bees/")
    parser.add_argument("--out", default="runs/fastai_flow")
    parser.add_argument("--arch", default="resnet34", help="body (its weights cached or downloadable)")
    parser.add_argument("--fallback", default="tf_efficientnet_lite0", help="body otherwise")
    parser.add_argument("--test-fraction", type=float, default=1 / 3, help="part of val moved to test/")
    parser.add_argument("--frozen-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3, help="unfrozen epochs")
    parser.add_argument("--input-size", type=int, default=None)
    args = parser.parse_args()

    out = Path(args.out)
    make_test_split(Path(args.data), out / "data", args.test_fraction, seed=0)
    arch, weights, why = weights_or_fallback(args.arch, args.fallback)  # downloads unless GRAFT_OFFLINE=1
    if why:
        print(f"{args.arch}: no ImageNet weights ({why}); using {arch}")
    print(f"body: {arch} (ImageNet weights from {weights})")
    data = ImageData.from_folder(out / "data")
    print(data.summary())

    # learn.fit_one_cycle(1) with the body frozen (fastai's default lr, 1e-3).
    learn = Learner(data, arch, input_size=args.input_size)
    learn.fit(mode="features", epochs=args.frozen_epochs, lr=1e-3)

    # interp = ClassificationInterpretation.from_learner(learn)
    interp = learn.interpret(split="val")
    print(f"\nafter the frozen epoch: val accuracy {interp.result.accuracy:.4f}")
    print("most confused:", interp.most_confused(5))
    for row in interp.top_losses(5):
        print(f"  loss {row['loss']:.3f}  {Path(row['path']).name}: {row['true']} predicted {row['pred']}")
    out.mkdir(parents=True, exist_ok=True)
    interp.plot_top_losses(9).savefig(out / "top_losses.png")
    interp.plot_confusion().savefig(out / "confusion.png")

    # learn.unfreeze(); learn.fit_one_cycle(3, lr_max=slice(1e-5, 3e-4))
    learn.fit(mode="full", epochs=args.epochs, lr=3e-4, lr_mult=30)
    val = learn.evaluate(split="val")
    print(f"\nafter unfreezing: val accuracy {val.accuracy:.4f} ({val.correct}/{val.n}), loss {val.loss:.4f}")

    # learn.get_preds(dl=learn.dls.test_dl(files)): one row per test image, in file order.
    print("\ntest predictions (file order):")
    for pred in learn.predict(out / "data" / "test"):
        # A photo far from every training image is answered "unknown": the closest class is shown beside it.
        unknown = f"  ({pred.unknown}: unknown score {pred.score:.3f})" if pred.unknown else ""
        print(f"  {pred.path.parent.name}/{pred.path.name}: {pred.labels[0]} {pred.prob:.3f}{unknown}")
    test = learn.evaluate(split="test")
    print(f"test accuracy {test.accuracy:.4f} ({test.correct}/{test.n})")
    run = learn.save(out / "run")
    print(f"saved run to {run}")


if __name__ == "__main__":
    main()
