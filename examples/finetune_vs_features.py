"""Recipe 5: fine-tuning vs a fixed feature extractor vs selective unfreezing, on ants and bees.

PyTorch's transfer-learning tutorial, three ways with one optimizer (SGD, lr 0.001, momentum 0.9,
learning rate x0.1 every 7 epochs, batches of 4): every weight trained; the body frozen and only the new head
trained; only the last stages (resnet's layer3 and layer4) and the head trained. resnet34's
weights are used when they are on this machine; otherwise the bundled EfficientNet-Lite0, whose
last stages are blocks.5, blocks.6 and its final conv. Each variant writes a grid of validation
predictions.

    python examples/finetune_vs_features.py ../shared/datasets/hymenoptera --out runs/ft_vs_features
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from graft import ImageData, Learner
from graft.models import weights_or_fallback

# The blocks "layer3 + layer4" stand for in each body (names from graft's body blocks).
LAST_STAGES = {
    "resnet34": ["layer3", "layer4"],
    "tf_efficientnet_lite0": ["blocks.5", "blocks.6", "conv_head", "bn2"],
}
VARIANTS = {
    "finetune": {"mode": "full"},  # every weight, one rate
    "features": {"mode": "features"},  # the body is a fixed feature extractor
    # Filled in with LAST_STAGES; on the augmented images, as the tutorial (graft's default would
    # train these blocks on cached activations of the blocks before them).
    "selective": {"mode": "full", "unfreeze": None, "cache_prefix": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="hymenoptera: train/ and val/ with ants/ and bees/")
    parser.add_argument("--out", default="runs/ft_vs_features")
    parser.add_argument("--arch", default="resnet34", help="body to use when its weights are cached")
    parser.add_argument("--fallback", default="tf_efficientnet_lite0", help="body otherwise")
    parser.add_argument("--epochs", type=int, default=8, help="per variant (the tutorial: 25)")
    parser.add_argument("--batch-size", type=int, default=4, help="the tutorial's 4")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--input-size", type=int, default=None)
    args = parser.parse_args()

    arch, weights, why = weights_or_fallback(args.arch, args.fallback)  # downloads unless GRAFT_OFFLINE=1
    if why:
        print(f"{args.arch}: no ImageNet weights ({why}); using {arch}")
    print(f"body: {arch} (ImageNet weights from {weights})")
    data = ImageData.from_folder(args.data)
    print(data.summary())
    sgd = {
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "batch_size": args.batch_size,
    }
    step = {"schedule": "step", "step_size": 7, "gamma": 0.1}

    rows = []
    for name in args.variants.split(","):
        options = dict(VARIANTS[name])
        if "unfreeze" in options:
            options["unfreeze"] = LAST_STAGES.get(arch, LAST_STAGES[args.fallback])
        print(f"\n--- {name}: {options}")
        start = time.perf_counter()
        learn = Learner(data, arch, input_size=args.input_size)
        learn.fit(epochs=args.epochs, **sgd, **step, **options)
        seconds = time.perf_counter() - start
        interp = learn.interpret(split="val")
        run = learn.save(Path(args.out) / name)
        interp.plot_predictions(16).savefig(run / "val_predictions.png")
        rows.append((name, interp.result.accuracy, interp.result.loss, learn.metrics["best_epoch"], seconds))

    print(f"\n{'variant':<10} {'val acc':>8} {'val loss':>9} {'best epoch':>11} {'seconds':>8}")
    for name, acc, loss, best, seconds in rows:
        print(f"{name:<10} {acc:8.4f} {loss:9.4f} {best:11d} {seconds:8.1f}")
    print(f"runs and their val_predictions.png in {args.out}/")


if __name__ == "__main__":
    main()
