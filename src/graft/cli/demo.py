"""``graft demo``: a real end-to-end run that needs no user data and no network.

scikit-learn ships 1,797 labeled 8×8 handwritten digits. They are written out as PNG class
folders with train/val/test splits, then graft trains on them with the bundled
EfficientNet-Lite0 ImageNet weights and reports accuracy on the held-out test split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from graft.infrastructure.config import TrainConfig
from graft.learner.learner import Learner
from graft.workflows.report import write_report

# A short fine-tune at a small input size: digits are 8×8, so 224 px would only cost time.
DEMO_CONFIG = dict(
    arch="tf_efficientnet_lite0", input_size=96, freeze_epochs=1, epochs=2, batch_size=32, rotate=0.0, seed=0
)


def default_data_dir() -> Path:
    """``$XDG_CACHE_HOME/graft/digits`` (``~/.cache/graft/digits``)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "graft" / "digits"


def write_digits(root: Path, seed: int = 0) -> Path:
    """Write scikit-learn's digits as ``root/{train,val,test}/<digit>/<n>.png`` (60/20/20, stratified).

    Does nothing if the folder is already complete.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    done = root / ".complete"
    if done.exists():
        return root
    index = np.arange(len(digits.target))
    train, rest = train_test_split(index, test_size=0.4, stratify=digits.target, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=digits.target[rest], random_state=seed)
    for split, ids in (("train", train), ("val", val), ("test", test)):
        for i in ids:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
            Image.fromarray(pixels, mode="L").resize((32, 32), Image.BICUBIC).save(folder / f"{i:04d}.png")
    done.write_text("ok\n")
    return root


def run_demo(out: Path, data: Path | None = None, device: str = "auto") -> int:
    """Write the digits, train, evaluate on the test split, save the run; returns an exit code."""
    root = write_digits(data or default_data_dir())
    print(f"demo: handwritten digits from scikit-learn written to {root}")
    cfg = TrainConfig(data=str(root), out=str(out), device=device, **DEMO_CONFIG)
    learn = Learner.from_config(cfg)
    print(learn.data.summary())
    print(
        f"demo: fine-tuning {cfg.arch} (ImageNet weights bundled) on {learn.device}, "
        f"{cfg.freeze_epochs} frozen + {cfg.epochs} unfrozen epochs"
    )
    learn.fit()
    interp = learn.interpret(split="test")
    result = interp.result
    learn.metrics.update(test_acc=result.accuracy, test_loss=result.loss, test_n=result.n)
    learn.save(out)
    report = write_report(learn, interp, out)
    print(result.format())
    print(f"demo: test accuracy {result.accuracy:.4f} on {result.n} unseen images")
    print(f"demo: run saved to {out}; open {report} to see the curves, confusions and top losses")
    print(f"demo: try: graft info {out}; graft predict {out} {root / 'test' / '3'}")
    return 0
