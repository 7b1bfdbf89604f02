"""Datasets with real-world labels, built from real images: multi-label collages of flowers5
photos, and imbalanced copies of class-folder datasets (recipe 7, ``real_world_labels.py``; the
tests build theirs with the same functions).
"""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

TILE = 128  # flowers5 photos are 128 x 128: pasted as they are, never resampled
# How many species an image shows, and how often: none, one, two or three.
SPECIES_MIX = ((0, 0.1), (1, 0.3), (2, 0.35), (3, 0.25))


def _background(rng: random.Random) -> Image.Image:
    """A tile with no flower: coloured noise, a flat colour or a gradient."""
    kind = rng.randrange(3)
    np_rng = np.random.default_rng(rng.randrange(2**32))
    if kind == 0:
        pixels = np_rng.integers(0, 256, (TILE, TILE, 3), dtype=np.uint8)
    elif kind == 1:
        pixels = np.full((TILE, TILE, 3), np_rng.integers(0, 256, 3), dtype=np.uint8)
    else:
        ramp = np.linspace(0, 1, TILE)[None, :, None]
        a, b = np_rng.integers(0, 256, 3), np_rng.integers(0, 256, 3)
        pixels = np.broadcast_to(a + (b - a) * ramp, (TILE, TILE, 3)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels))


def make_collages(out: Path, n: int, source: Path, seed: int = 0) -> dict[str, tuple[str, ...]]:
    """Write ``n`` 2 x 2 collages (256 x 256 JPEGs) of flowers5 photos to ``out/images`` and
    ``out/labels.csv`` (``id,labels``: the species present, space-separated; empty for none).

    Each photo is used once at most (no photo is in two collages, so none crosses the split);
    the cells without a photo hold a background tile. Returns id -> labels.
    """
    rng = random.Random(seed)
    species = sorted(p.name for p in source.iterdir() if p.is_dir())
    pools = {s: sorted((source / s).glob("*.jpg")) for s in species}
    for pool in pools.values():
        rng.shuffle(pool)
    counts, weights = zip(*SPECIES_MIX, strict=True)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    labels: dict[str, tuple[str, ...]] = {}
    for i in range(n):
        k = rng.choices(counts, weights)[0]
        shown = sorted(rng.sample(species, k))
        cells = [Image.open(pools[s].pop()).convert("RGB") for s in shown]
        cells += [_background(rng) for _ in range(4 - k)]
        rng.shuffle(cells)
        canvas = Image.new("RGB", (2 * TILE, 2 * TILE))
        for j, cell in enumerate(cells):
            canvas.paste(cell, ((j % 2) * TILE, (j // 2) * TILE))
        key = f"c{i:04d}"
        canvas.save(images / f"{key}.jpg", quality=92)
        labels[key] = tuple(shown)
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "labels"])
        for key, names in labels.items():
            w.writerow([key, " ".join(names)])
    return labels


def make_imbalanced(
    out: Path,
    cut: str,
    source: Path,
    ratio: int = 20,
    per_class: int | None = None,
    val_per_class: int = 40,
    seed: int = 0,
) -> Path:
    """A ``train/`` + ``val/`` copy of a class-folder dataset whose class ``cut`` keeps 1/``ratio``
    of the training images the other classes have; val is left balanced (``val_per_class`` each),
    so it measures every class alike.

    Args:
        source: Class folders (flowers5's), split here; or a dataset with train/ and val/
            (hymenoptera), whose val/ is copied as it is.
        per_class: Training images of each other class (default: all that are left).
    """
    rng = random.Random(seed)
    split = (source / "train").is_dir()
    classes = sorted(p.name for p in (source / "train" if split else source).iterdir() if p.is_dir())
    parts: dict[str, dict[str, list[Path]]] = {}
    for c in classes:
        files = sorted(((source / "train" / c) if split else (source / c)).iterdir())
        rng.shuffle(files)
        val = sorted((source / "val" / c).iterdir()) if split else files[:val_per_class]
        train = files if split else files[val_per_class:]
        parts[c] = {"train": train[:per_class] if per_class else train, "val": val}
    others = min(len(parts[c]["train"]) for c in classes if c != cut)
    parts[cut]["train"] = parts[cut]["train"][: max(1, others // ratio)]
    for c, by_split in parts.items():
        for name, files in by_split.items():
            (out / name / c).mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy(f, out / name / c / f.name)
    return out
