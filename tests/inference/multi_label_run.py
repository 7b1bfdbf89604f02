"""A really trained tiny multi-label run, for the inference, serving, export and CLI tests:
64 x 64 images of four tiles, each class a colour shown in some tiles (none, one or several
classes per image), labels in an ``id,labels`` CSV."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220)}


def make_tiles(root: Path, n: int = 60, seed: int = 0) -> Path:
    """Write ``root/images/img_<i>.png`` and ``root/labels.csv``; returns ``root``."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["id,labels"]
    for i in range(n):
        shown = sorted(rng.sample(sorted(COLOURS), rng.choice((0, 1, 1, 2, 2, 3))))
        cells = [COLOURS[c] for c in shown] + [(128, 128, 128)] * (4 - len(shown))
        rng.shuffle(cells)
        pixels = np.zeros((64, 64, 3), dtype=np.int16)
        for k, colour in enumerate(cells):
            y, x = divmod(k, 2)
            pixels[32 * y : 32 * y + 32, 32 * x : 32 * x + 32] = colour
        pixels += noise.integers(-20, 21, pixels.shape, dtype=np.int16)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / "images" / f"img_{i}.png")
        lines.append(f"img_{i},{' '.join(shown)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def train_multi_label(root: Path, out: Path) -> Path:
    """Train a run on :func:`make_tiles` data in seconds (frozen body, fp32); returns its folder."""
    from graft import ImageData, Learner

    learn = Learner(
        ImageData.from_folder(root, labels="labels.csv"), "tf_efficientnet_lite0", input_size=32, seed=0
    )
    learn.fit(
        mode="features",
        epochs=8,
        batch_size=8,
        lr=0.03,
        augment=False,
        workers=0,
        precision="fp32",
        log=lambda _: None,
    )
    return learn.save(out)
