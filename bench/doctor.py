"""graft doctor's speed goals, measured as a user runs it, from a cold feature cache:

    python bench/doctor.py                  # hymenoptera (goal: under 30 s) and 10,000 images (10 min)
    python bench/doctor.py --images 5000    # a smaller pile

The 10,000 images are every image of ../shared/datasets (flowers5, cifar10_folders, malaria_subset,
hymenoptera: 6,115) hard-linked into one class folder per source class, topped up with mirrored,
re-encoded flowers5 photos. Each run gets an empty GRAFT_CACHE_DIR; the warm rerun reuses it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import graft_cmd, graft_version, machine_info, timed

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SOURCES = [
    ("flowers", SHARED / "flowers5" / "flowers"),
    ("cifar", SHARED / "cifar10_folders" / "train"),
    ("cifar", SHARED / "cifar10_folders" / "test"),
    ("malaria", SHARED / "malaria_subset"),
    ("hym", SHARED / "hymenoptera" / "train"),
    ("hym", SHARED / "hymenoptera" / "val"),
]


def build_pile(out: Path, count: int) -> int:
    """Fill ``out`` with ``count`` images in class folders; returns how many were written."""
    files = []
    for tag, folder in SOURCES:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png", ".gif"):
                files.append((f"{tag}_{path.parent.name}", path))
    written = 0
    for cls, path in files[:count]:
        target = out / cls / f"{written:05d}_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
        written += 1
    flowers = [(c, p) for c, p in files if c.startswith("flowers_")]
    for cls, path in flowers[: max(0, count - written)]:
        with Image.open(path) as im:
            ImageOps.mirror(im.convert("RGB")).save(out / cls / f"{written:05d}_mirror.jpg", quality=85)
        written += 1
    return written


def run(data: Path, out: Path, cache: Path) -> dict:
    env = dict(os.environ, GRAFT_CACHE_DIR=str(cache))
    return timed(graft_cmd("doctor", str(data), "--out", str(out)), env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    print(f"graft {graft_version()}; {machine_info()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hym = run(SHARED / "hymenoptera", tmp / "hym-out", tmp / "cache-hym")
        print(
            f"hymenoptera (398 images), cold cache: {hym['wall_s']:.1f} s "
            f"(goal 30 s: {hym['wall_s'] / 30:.2f}x)"
        )
        print(
            "\n".join(
                "  " + line for line in hym["stdout"].splitlines() if not line.startswith("graft: warning")
            )
        )
        pile = tmp / "pile"
        n = build_pile(pile, args.images)
        cold = run(pile, tmp / "pile-out", tmp / "cache-pile")
        warm = run(pile, tmp / "pile-out", tmp / "cache-pile")
        goal = 600 * n / 10_000
        print(
            f"{n:,} images, cold cache: {cold['wall_s']:.1f} s "
            f"(goal {goal:.0f} s: {cold['wall_s'] / goal:.2f}x), "
            f"peak RSS {cold['peak_rss_mb']:.0f} MB; warm cache: {warm['wall_s']:.1f} s"
        )
        print(
            "\n".join(
                "  " + line for line in cold["stdout"].splitlines() if not line.startswith("graft: warning")
            )
        )


if __name__ == "__main__":
    main()
