"""flowers5 made dirty on purpose, for graft doctor's tests and bench: a seeded train/val copy with
5% of the labels flipped and resized, re-encoded copies of 20 images planted in other splits."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

FLIP_FRACTION = 0.05
PLANTED = 20


@dataclass
class Dirty:
    """The dirtied copy and what was done to it (paths inside ``root``)."""

    root: Path
    flipped: dict[Path, str] = field(default_factory=dict)  # file -> its true class
    planted: dict[Path, Path] = field(default_factory=dict)  # planted copy -> its original


def dirty_flowers(source: Path, root: Path, seed: int = 0) -> Dirty:
    """Copy ``source``'s class folders into ``root/train`` and ``root/val`` (80/20 per class),
    flip a seeded 5% of all labels, and plant 20 copies (3/4 size, JPEG quality 70) of untouched
    train images under the same class in val/ or test/."""
    rng = random.Random(seed)
    classes = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = []
    for c in classes:
        names = sorted(p.name for p in (source / c).iterdir() if p.is_file() and not p.name.startswith("."))
        rng.shuffle(names)
        cut = int(0.8 * len(names))
        files += [(c, n, "train" if i < cut else "val") for i, n in enumerate(names)]
    flip = set(rng.sample(range(len(files)), int(FLIP_FRACTION * len(files))))
    dirty = Dirty(root)
    for k, (c, name, split) in enumerate(files):
        label = rng.choice([o for o in classes if o != c]) if k in flip else c
        target = root / split / label / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / c / name, target)
        if k in flip:
            dirty.flipped[target] = c
    pool = [k for k, (_, _, split) in enumerate(files) if split == "train" and k not in flip]
    for n, k in enumerate(rng.sample(pool, PLANTED)):
        c, name, _ = files[k]
        split = "val" if n % 2 else "test"
        with Image.open(source / c / name) as im:
            small = im.convert("RGB").resize(
                (im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.BICUBIC
            )
        target = root / split / c / f"copy_{Path(name).stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        small.save(target, quality=70)
        dirty.planted[target] = root / "train" / c / name
    return dirty
