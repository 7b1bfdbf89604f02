"""fastai's fine_tune on an ImageFolder dataset, with graft's offline EfficientNet-Lite0 weights.

The baseline of ``bench/performance.py`` (run by it in a subprocess, so the timing includes
imports and model load, like graft's CLI). Needs the bench extra: ``pip install -e .[bench]``.

Usage: python bench/fastai_baseline.py DATA --out RESULT.json [--epochs 3 --freeze-epochs 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()

from fastai.vision.all import (  # noqa: E402
    ImageDataLoaders,
    Resize,
    accuracy,
    aug_transforms,
    vision_learner,
)
from safetensors.torch import save_file  # noqa: E402

from graft.models.factory import _construct  # noqa: E402
from graft.models.registry import lite_file  # noqa: E402
from graft.models.weights import convert_lukemelas, read_state_dict  # noqa: E402


def timm_weights(arch: str, folder: Path) -> Path:
    """The packaged lite checkpoint converted to timm's key names, as a safetensors file."""
    sd = convert_lukemelas(read_state_dict(lite_file(arch)), _construct("timm", arch, {}, init=False))
    path = folder / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default="tf_efficientnet_lite0")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--freeze-epochs", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bs", type=int, default=32)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = timm_weights(args.arch, Path(tmp))
        dls = ImageDataLoaders.from_folder(
            args.data,
            train="train",
            valid="val",
            item_tfms=Resize(args.size),
            batch_tfms=aug_transforms(size=args.size),
            bs=args.bs,
            seed=0,
        )
        learn = vision_learner(
            dls,
            args.arch,
            metrics=accuracy,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(weights)},
        )
        with learn.no_bar():
            learn.fine_tune(args.epochs, freeze_epochs=args.freeze_epochs)
        _, acc = learn.validate()
    result = {"wall_s": time.perf_counter() - T0, "val_acc": float(acc), "val_images": len(dls.valid_ds)}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
