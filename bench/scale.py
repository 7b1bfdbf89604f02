"""Fine-tuning at the price of a frozen head: graft's cost and memory as the dataset grows.

Builds synthetic ImageFolder datasets of 2,000, 5,000 and 20,000 JPEGs (``--sizes``) from the
real images in ../shared/datasets: 19 classes (flowers5's 5, hymenoptera's ants and bees,
malaria's 2, cifar10_folders' 10), each file a seeded random crop of a source image of its
class, resized to 96-320 px on its longer side and re-encoded at JPEG quality 70-95, so that no
two files are byte-identical (checked while writing). File i is the same for every size, so the
largest size is generated once into ``WORK/scale-N/{train,val}/<class>/`` (80/20) and the
smaller ones are hard links to its first files (no disk is duplicated); a marker
``scale.json`` lets a later run reuse them.

For each size, one cold run (a fresh ``GRAFT_CACHE_DIR``, ``GRAFT_OFFLINE=1``) of
``graft train DATA --freeze-epochs 1 --epochs 1 --no-report``, which always runs the unfrozen
epoch after the frozen one, and prints a markdown table of:

- images: train + val;
- extraction s: the frozen body's features of every image (graft's ``features of the frozen
  body: ... (12.3 s; ...)`` line), and the images/s that makes;
- raw forward images/s: tf_efficientnet_lite0 (random weights, eval, channels_last, fp32) on
  batches of random 224x224 tensors in this process, measured after each run, so the
  extraction's decoding, resizing and caching overhead shows beside it;
- head epoch s and cached-prefix epoch s: the seconds of the frozen and of the unfrozen epoch in
  the run's ``history.csv`` (each with its validation pass);
- per 1,000 images (train + val): the extraction seconds and the unfrozen epoch's seconds;
- peak RSS MB of the training process, and its wall seconds.

Then the ratios that show linear cost and flat memory (seconds per image and peak RSS at each
size over the smallest size's), graft's lines starting ``activations of the frozen prefix`` or
``estimate`` where it prints them, and the machine. Not a test: it prints measurements, it
asserts nothing.

Usage: python bench/scale.py [--sizes 2000,5000,20000] [--work DIR] [--seed N]
       [--batch-size 32] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
# Source class folders: one synthetic class per entry, its images drawn from all the folders.
SOURCES = {
    **{c: [f"flowers5/flowers/{c}"] for c in ("daisy", "dandelion", "rose", "sunflower", "tulip")},
    **{c: [f"hymenoptera/train/{c}", f"hymenoptera/val/{c}"] for c in ("ants", "bees")},
    **{c: [f"malaria_subset/test_images/{c}"] for c in ("NotInfected", "infected")},
    **{
        c: [f"cifar10_folders/train/{c}", f"cifar10_folders/test/{c}"]
        for c in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    },
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# Bump when the recipe of a file changes, so folders generated before are not reused.
GENERATOR_VERSION = 1
MARKER = "scale.json"
VAL_EVERY = 5  # the 5th, 10th, ... file of each class goes to val: an 80/20 split
RAW_WARMUP, RAW_BATCHES = 2, 6
EXTRACTION_S = re.compile(r"\((\d+\.\d+) s;")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import epoch_seconds, graft_cmd, graft_version, machine_info, timed  # noqa: E402


def source_pools() -> dict[str, list[Path]]:
    """Each synthetic class's source images, sorted (missing folders are skipped)."""
    pools: dict[str, list[Path]] = {}
    for name, folders in SOURCES.items():
        files = [
            f
            for folder in folders
            if (DATASETS / folder).is_dir()
            for f in (DATASETS / folder).iterdir()
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]
        if files:
            pools[name] = sorted(files)
    if not pools:
        sys.exit(f"no source images under {DATASETS} (see {DATASETS / 'SOURCES.md'})")
    return pools


def relative_path(index: int, classes: list[str]) -> Path:
    """Where file ``index`` lives in a dataset: ``{train,val}/<class>/<index>.jpg``."""
    cls = classes[index % len(classes)]
    split = "val" if (index // len(classes)) % VAL_EVERY == VAL_EVERY - 1 else "train"
    return Path(split) / cls / f"{index:06d}.jpg"


def recipe(index: int, seed: int, pool: list[Path]) -> tuple[Path, random.Random]:
    """File ``index``'s source image and the generator of its crop, size and quality."""
    rng = random.Random(f"{seed}:{index}")
    return pool[rng.randrange(len(pool))], rng


def encode(image, rng: random.Random) -> bytes:
    """A random crop of ``image`` (30-100% of its area), 96-320 px on its longer side, as JPEG."""
    from PIL import Image

    w, h = image.size
    area = rng.uniform(0.3, 1.0) * w * h
    aspect = rng.uniform(3 / 4, 4 / 3)
    cw = max(1, min(w, round((area * aspect) ** 0.5)))
    ch = max(1, min(h, round((area / aspect) ** 0.5)))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = image.crop((left, top, left + cw, top + ch))
    side = rng.randint(96, 320)
    scale = side / max(cw, ch)
    crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    crop.save(buf, "JPEG", quality=rng.randint(70, 95))
    return buf.getvalue()


def generate(folder: Path, images: int, seed: int) -> None:
    """Write ``images`` synthetic JPEGs into ``folder`` (decoding each source image once)."""
    from PIL import Image

    pools = source_pools()
    classes = sorted(pools)
    jobs = []
    for i in range(images):
        source, rng = recipe(i, seed, pools[classes[i % len(classes)]])
        jobs.append((source, i, rng))
    jobs.sort(key=lambda job: (str(job[0]), job[1]))
    for cls in classes:
        for split in ("train", "val"):
            (folder / split / cls).mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()
    last, image = None, None
    for source, i, rng in jobs:
        if source != last:
            with Image.open(source) as im:
                image = im.convert("RGB")
            last = source
        data = encode(image, rng)
        while hashlib.sha1(data).digest() in seen:  # another crop of the same source: draw again
            data = encode(image, rng)
        seen.add(hashlib.sha1(data).digest())
        (folder / relative_path(i, classes)).write_bytes(data)
    write_marker(folder, images, seed, classes, full=True)


def write_marker(folder: Path, images: int, seed: int, classes: list[str], full: bool) -> None:
    """Record what ``folder`` holds, last, so an interrupted generation is never reused."""
    marker = {"version": GENERATOR_VERSION, "seed": seed, "images": images, "classes": classes}
    (folder / MARKER).write_text(json.dumps({**marker, "full": full}, indent=2))


def read_marker(folder: Path, seed: int) -> dict | None:
    """The marker of a folder generated with this seed and this generator version, else None."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    ok = marker.get("version") == GENERATOR_VERSION and marker.get("seed") == seed
    return marker if ok else None


def link_subset(full: Path, folder: Path, images: int, seed: int, classes: list[str]) -> None:
    """Make ``folder`` the first ``images`` files of ``full`` as hard links."""
    shutil.rmtree(folder, ignore_errors=True)
    for cls in classes:
        for split in ("train", "val"):
            (folder / split / cls).mkdir(parents=True, exist_ok=True)
    for i in range(images):
        rel = relative_path(i, classes)
        os.link(full / rel, folder / rel)
    write_marker(folder, images, seed, classes, full=False)


def prepare(work: Path, sizes: list[int], seed: int) -> tuple[dict[int, Path], float]:
    """The dataset folder of each size (generated or reused), and the seconds spent making them."""
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    folders = {n: work / f"scale-{n}" for n in sizes}
    full = None  # a complete generation with this seed at least as large as the largest size
    for candidate in sorted(work.glob("scale-*")):
        marker = read_marker(candidate, seed)
        big_enough = bool(marker and marker["full"] and marker["images"] >= max(sizes))
        if big_enough and (full is None or marker["images"] < full[1]["images"]):
            full = (candidate, marker)
    if full is None:
        biggest = folders[max(sizes)]
        shutil.rmtree(biggest, ignore_errors=True)
        print(f"generating {max(sizes)} images into {biggest} ...", flush=True)
        generate(biggest, max(sizes), seed)
        full = (biggest, read_marker(biggest, seed))
    source, marker = full
    for n, folder in folders.items():
        existing = read_marker(folder, seed)
        if folder != source and not (existing and existing["images"] == n):
            link_subset(source, folder, n, seed, marker["classes"])
    return folders, time.perf_counter() - t0


def count_images(folder: Path) -> dict[str, int]:
    """Images per split of an ImageFolder dataset."""
    return {split: sum(1 for _ in (folder / split).glob("*/*.jpg")) for split in ("train", "val")}


def cold_run(data: Path, tmp: Path, batch_size: int) -> dict:
    """One ``graft train`` with an empty feature cache, and what its log and history say."""
    n = data.name
    env = {**os.environ, "GRAFT_CACHE_DIR": str(tmp / f"cache-{n}"), "GRAFT_OFFLINE": "1"}
    run = tmp / f"run-{n}"
    args = ("--freeze-epochs", "1", "--epochs", "1", "--no-report", "--batch-size", str(batch_size))
    r = timed(graft_cmd("train", str(data), *args, "--out", str(run), "--overwrite"), env)
    lines = r["stdout"].splitlines()
    features = next((ln for ln in lines if ln.startswith("features of the frozen body:")), "")
    match = EXTRACTION_S.search(features)
    seconds = epoch_seconds(run / "history.csv")
    return {
        "wall_s": r["wall_s"],
        "peak_rss_mb": r["peak_rss_mb"],
        "extraction_s": float(match.group(1)) if match else None,
        "features_line": features,
        "head_epoch_s": seconds["frozen"],
        "prefix_epoch_s": seconds["unfrozen"],
        "prefix_lines": [ln for ln in lines if ln.startswith("activations of the frozen prefix")],
        "estimate_lines": [ln for ln in lines if ln.startswith("estimate")],
    }


def raw_forward(batch_size: int) -> float:
    """Images/s of tf_efficientnet_lite0's forward on random 224x224 batches (fp32, CPU)."""
    import timm
    import torch

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(RAW_WARMUP):
            model(x)
        t0 = time.perf_counter()
        for _ in range(RAW_BATCHES):
            model(x)
        return batch_size * RAW_BATCHES / (time.perf_counter() - t0)


def fmt(value: float | None, spec: str = ".1f") -> str:
    """A table cell: the number, or a dash when graft did not print it."""
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    """The markdown table of every size, then the ratios to the smallest size."""
    print(
        "| images | extraction s (images/s) | raw forward images/s | head epoch s | cached-prefix epoch s "
        "| per 1,000 images: extraction s, prefix epoch s | peak RSS MB | wall s |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        per = 1000 / r["images"]
        ext = r["extraction_s"]
        ext_cell = "-" if ext is None else f"{ext:.1f} ({r['extraction_images_per_s']:.1f})"
        per_ext = None if ext is None else ext * per
        print(
            f"| {r['images']:,} | {ext_cell} | {r['raw_forward_images_per_s']:.0f} | {r['head_epoch_s']:.2f} "
            f"| {r['prefix_epoch_s']:.1f} | {fmt(per_ext)}, {r['prefix_epoch_s'] * per:.1f} "
            f"| {r['peak_rss_mb']:.0f} | {r['wall_s']:.1f} |"
        )
    base = rows[0]

    def ratios(key: str, per_image: bool) -> str:
        if base[key] is None or base[key] == 0:
            return "-"
        scaled = [r[key] / (r["images"] if per_image else 1) for r in rows if r[key] is not None]
        return ", ".join(f"{v / (base[key] / (base['images'] if per_image else 1)):.2f}" for v in scaled)

    sizes = ", ".join(f"{r['images']:,}" for r in rows)
    print(
        f"over the smallest size ({base['images']:,} images), at sizes {sizes}: prefix-epoch s per image "
        f"{ratios('prefix_epoch_s', True)} (linear cost: 1); extraction s per image "
        f"{ratios('extraction_s', True)}; peak RSS {ratios('peak_rss_mb', False)} (flat memory: 1)"
    )
    of_raw = [
        f"{r['extraction_images_per_s'] / r['raw_forward_images_per_s']:.2f}"
        for r in rows
        if r["extraction_images_per_s"]
    ]
    print(f"extraction images/s over raw forward images/s: {', '.join(of_raw) or '-'}")


def run_size(folder: Path, tmp: Path, batch_size: int) -> dict:
    """The cold run on one size, with the raw forward measured right after it."""
    counts = count_images(folder)
    images = counts["train"] + counts["val"]
    print(f"{images} images ({counts['train']} train, {counts['val']} val): graft train ...", flush=True)
    r = {"images": images, **counts, "data": str(folder), **cold_run(folder, tmp, batch_size)}
    ext = r["extraction_s"]
    r["extraction_images_per_s"] = images / ext if ext else None
    r["raw_forward_images_per_s"] = raw_forward(batch_size)
    for line in [r["features_line"], *r["prefix_lines"], *r["estimate_lines"]]:
        print(f"  {line}")
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="2000,5000,20000", help="comma-separated dataset sizes in images")
    p.add_argument("--quick", action="store_true", help="sizes 200,500: a smoke run")
    p.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "graft-bench-scale",
        help="folder of the generated datasets, reused across runs (default: under the temp dir)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the generated files")
    p.add_argument("--batch-size", type=int, default=32, help="passed to graft train and the raw forward")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    sizes = sorted({int(s) for s in ("200,500" if args.quick else args.sizes).split(",") if s.strip()})
    folders, prepare_s = prepare(args.work, sizes, args.seed)
    machine = machine_info()
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}, "
        f"torch {machine['torch']}; datasets in {args.work} ({prepare_s:.1f} s to prepare)"
    )
    results: dict = {"machine": machine, "work": str(args.work), "seed": args.seed, "prepare_s": prepare_s}
    results.update(batch_size=args.batch_size, graft_version=graft_version())
    print(f"graft {results['graft_version']}, batch size {args.batch_size}")
    with tempfile.TemporaryDirectory(prefix="graft-scale-") as tmp_name:
        rows = [run_size(folders[n], Path(tmp_name), args.batch_size) for n in sizes]
    print_table(rows)
    results["sizes"] = rows
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
