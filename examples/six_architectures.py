"""Recipe 4: ants vs bees on six torchvision architectures, three ways each.

PyTorch's "finetuning torchvision models" tutorial: resnet18, alexnet, vgg11_bn, squeezenet1_0,
densenet121 and inception_v3 (299 px), each as a feature extractor (only the new head trains), fine-
tuned (head first, then everything) and from scratch. graft replaces each family's head: the last
Linear (resnet ``fc``, alexnet/vgg ``classifier.6``, densenet ``classifier``), squeezenet's final
1x1 conv ``classifier.1``, and inception's ``fc`` plus its auxiliary ``AuxLogits.fc``, whose loss
is added with weight 0.4. Pretrained runs use the official torchvision weights, downloaded into the
torch hub cache (``$TORCH_HOME/hub/checkpoints``) on first use; an architecture whose weights can
be neither found nor fetched (an offline machine) runs from scratch only, and the table says so.

    python examples/six_architectures.py ../shared/datasets/hymenoptera --out runs/six_archs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from graft import ImageData, Learner
from graft.infrastructure.errors import GraftError
from graft.models import fetch_weights

ARCHS = ["resnet18", "alexnet", "vgg11_bn", "squeezenet1_0", "densenet121", "inception_v3"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="hymenoptera: train/ and val/ with ants/ and bees/")
    parser.add_argument("--out", default="runs/six_archs")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated subset")
    parser.add_argument("--epochs", type=int, default=2, help="epochs on images per run (the tutorial: 15)")
    parser.add_argument("--scratch-epochs", type=int, default=None, help="default: --epochs")
    parser.add_argument("--input-size", type=int, default=None, help="default: each model's own")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    data = ImageData.from_folder(args.data)
    print(data.summary())
    # The tutorial's optimizer for every run: SGD, lr 0.001, momentum 0.9.
    sgd = {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "batch_size": args.batch_size}
    runs = {
        # Frozen body: the head trains on cached features, 10 epochs cost less than one on images.
        "features": {"mode": "features", "epochs": 10},
        # Every weight unfrozen, as the tutorial fine-tunes (graft's default trains the last stage).
        "finetune": {"mode": "finetune", "freeze_epochs": 10, "epochs": args.epochs, "unfreeze": ["all"]},
        "scratch": {"mode": "scratch", "epochs": args.scratch_epochs or args.epochs, "lr": 1e-2},
    }
    rows = []
    for arch in args.archs.split(","):
        try:  # cached, or downloaded now unless GRAFT_OFFLINE=1
            weights = fetch_weights(arch).path
        except GraftError as e:
            weights = None
            print(f"\n{arch}: no ImageNet weights ({e}): from scratch only")
        for how, options in runs.items():
            if how != "scratch" and weights is None:
                rows.append((arch, how, None, None, None, "no weights"))
                continue
            print(f"\n--- {arch}, {how}")
            start = time.perf_counter()
            size = None if arch == "inception_v3" else args.input_size  # its aux head needs 299 px
            learn = Learner(data, arch, pretrained=how != "scratch", input_size=size)
            learn.fit(**{**sgd, **options})
            seconds = time.perf_counter() - start
            learn.save(Path(args.out) / f"{arch}-{how}")
            size = learn.preprocessing.input_size
            rows.append(
                (arch, how, learn.metrics["val_acc"], size, seconds, ", ".join(learn.spec.head_names))
            )

    print(f"\n{'arch':<14} {'how':<9} {'val acc':>8} {'px':>4} {'seconds':>8}  head")
    for arch, how, acc, size, seconds, note in rows:
        if acc is None:
            print(f"{arch:<14} {how:<9} {'-':>8} {'-':>4} {'-':>8}  {note}")
        else:
            print(f"{arch:<14} {how:<9} {acc:8.4f} {size:4d} {seconds:8.1f}  {note}")


if __name__ == "__main__":
    main()
