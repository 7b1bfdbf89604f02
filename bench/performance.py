"""graft's speed and memory against fastai's fine_tune, measured in one run on one machine.

Prints, for one ImageFolder dataset (default: ../shared/datasets/hymenoptera):

1. fastai: ``vision_learner`` + ``fine_tune(3, freeze_epochs=1)`` with the same
   tf_efficientnet_lite0 weights (bench/fastai_baseline.py, a subprocess: imports included).
2. graft: ``graft train DATA`` with defaults, then ``graft evaluate RUN DATA/val``, as a user
   types them, with an empty feature cache (cold), and the same again with the cache filled (warm).
3. The ratio of the wall times (fastai / graft cold), both validation accuracies, and the peak
   resident memory of each training process.
4. Prediction throughput: ``Learner.predict_probs`` over a folder (what ``graft predict`` runs:
   decoding, resizing, forward) against the raw forward of the same inference model on the same
   images already decoded into tensors, at the same batch size and precision, on DATA (photos of
   about 500x375, whose JPEG decoding and resizing cost about a third of the forward pass on
   2 cores) and on flowers5's daisy folder (128 px JPEGs).

Needs the bench extra for the baseline: ``pip install -e .[bench]`` (fastai). ``--skip-fastai``
runs graft's part alone. Not a test: it prints measurements, it asserts nothing.

Usage: python bench/performance.py [--data DIR] [--predict DIR...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
# Small JPEGs (128 px), where decoding costs little next to the forward pass.
SMALL_IMAGES = ROOT.parent / "shared" / "datasets" / "flowers5" / "flowers" / "daisy"
REPEATS = 5

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import graft_cmd, timed  # noqa: E402


def bench_fastai(data: Path, env: dict[str, str], tmp: Path) -> dict:
    out = tmp / "fastai.json"
    r = timed([sys.executable, str(ROOT / "bench" / "fastai_baseline.py"), str(data), "--out", str(out)], env)
    return {**json.loads(out.read_text()), "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"]}


def bench_graft(data: Path, env: dict[str, str], tmp: Path, name: str) -> dict:
    run = tmp / name
    # --no-report: fastai's fine_tune draws no plots either (the report adds about 4 s).
    train = timed(graft_cmd("train", str(data), "--out", str(run), "--no-report"), env)
    ev = timed(graft_cmd("evaluate", str(run), str(data / "val"), "--json"), env)
    result = json.loads(ev["stdout"][ev["stdout"].index("{") :])
    cache_line = next((ln for ln in train["stdout"].splitlines() if ln.startswith("features of")), "")
    return {
        "train_s": train["wall_s"],
        "evaluate_s": ev["wall_s"],
        "wall_s": train["wall_s"] + ev["wall_s"],
        "val_acc": result["accuracy"],
        "val_images": result["n"],
        "peak_rss_mb": train["peak_rss_mb"],
        "features": cache_line,
        "precision": json.loads((run / "graft.json").read_text())["precision"],
        "run": str(run),
    }


def bench_predict(run: str, folder: Path) -> dict:
    """Images/s of predict_probs against the raw forward on pre-decoded tensors."""
    import torch

    from graft.data.images import list_images, load_image
    from graft.data.transforms import eval_transform
    from graft.infrastructure.runtime import autocast, channels_last, inference_batch_size
    from graft.learner.learner import load_learner
    from graft.models.fuse import inference_model

    learn = load_learner(run)
    paths = list_images(folder, recursive=True)
    bs = inference_batch_size(learn.device, 32)
    learn.predict_probs(paths[:bs])  # warm-up: oneDNN primitives, page cache
    pre = learn.preprocessing
    tf = eval_transform(pre)
    tensors = [tf(load_image(p, pre.resize_size)) for p in paths]
    batches = [channels_last(torch.stack(tensors[i : i + bs])) for i in range(0, len(tensors), bs)]
    fast = inference_model(learn.model, pre.input_size, learn.device)

    def raw_forward() -> None:
        with torch.inference_mode(), autocast(learn.device, learn.precision):
            for b in batches:
                fast(b.to(learn.device)).float().cpu()

    raw_forward()  # warm-up
    # This machine's neighbours make single timings vary by 20% or more: alternate the two
    # measurements so both see the same conditions, and take medians.
    predict_times, raw_times = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        kept, _ = learn.predict_probs(paths)
        predict_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        raw_forward()
        raw_times.append(time.perf_counter() - t0)
    predict_s, raw_s = statistics.median(predict_times), statistics.median(raw_times)
    return {
        "images": len(kept),
        "batch_size": bs,
        "precision": learn.precision,
        "predict_images_per_s": len(kept) / predict_s,
        "raw_forward_images_per_s": len(tensors) / raw_s,
        "ratio": (len(kept) / predict_s) / (len(tensors) / raw_s),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ImageFolder with train/ and val/")
    p.add_argument(
        "--predict",
        type=Path,
        nargs="*",
        default=None,
        help="folders for the throughput test (default: DATA, and flowers5's daisy folder if present)",
    )
    p.add_argument("--skip-fastai", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    if not (args.data / "train").is_dir():
        sys.exit(f"no dataset at {args.data} (see ../shared/datasets/SOURCES.md)")
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    machine = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"machine: {machine}; data: {args.data}")
    results: dict = {"machine": machine, "data": str(args.data)}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "GRAFT_CACHE_DIR": str(tmp / "cache")}
        if not args.skip_fastai:
            results["fastai"] = bench_fastai(args.data, env, tmp)
            f = results["fastai"]
            print(
                f"fastai fine_tune(3, freeze_epochs=1): {f['wall_s']:.1f} s, val acc {f['val_acc']:.4f}, "
                f"peak RSS {f['peak_rss_mb']:.0f} MB"
            )
        for name in ("cold", "warm"):
            results[f"graft_{name}"] = g = bench_graft(args.data, env, tmp, f"run-{name}")
            print(
                f"graft train + evaluate ({name} cache): {g['wall_s']:.1f} s "
                f"(train {g['train_s']:.1f} s, evaluate {g['evaluate_s']:.1f} s), "
                f"val acc {g['val_acc']:.4f}, peak RSS {g['peak_rss_mb']:.0f} MB; {g['features']}"
            )
        print(f"graft's precision: {results['graft_cold']['precision']}")
        if "fastai" in results:
            for name in ("cold", "warm"):
                ratio = results["fastai"]["wall_s"] / results[f"graft_{name}"]["wall_s"]
                results[f"speedup_{name}"] = ratio
                print(f"speed-up over fastai ({name} cache): {ratio:.1f}x")
        folders = args.predict or [args.data, *([SMALL_IMAGES] if SMALL_IMAGES.is_dir() else [])]
        results["predict"] = []
        for folder in folders:
            r = bench_predict(results["graft_cold"]["run"], folder)
            results["predict"].append({"folder": str(folder), **r})
            print(
                f"predict {folder}: {r['predict_images_per_s']:.1f} images/s over {r['images']} images "
                f"vs raw forward {r['raw_forward_images_per_s']:.1f} images/s (batch {r['batch_size']}, "
                f"{r['precision']}): ratio {r['ratio']:.2f}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
