"""CPU speed of the models a user is likely to pick, for the README's "choosing a model" table.

Each model is built by graft (``create_model(arch, num_classes=2, pretrained=False, input_size=...)``)
with random weights: speed does not depend on the weights, and nothing is downloaded. fp32, torch's
default thread count. For each model:

1. Feature extraction (images/s): ``model.eval()`` under ``torch.inference_mode()``, a batch of 16
   random images at the model's own input size (``Preprocessing.input_size``), forward of the body
   only: ``forward_features`` + ``forward_head(x, pre_logits=True)`` for timm models; the full
   forward for torchvision models, whose 2-class head is one small Linear layer, negligible next
   to the body.
2. Fine-tune step (images/s): ``model.train()``, SGD (momentum 0.9) over all parameters, batch 8,
   forward + cross-entropy + backward + step.

Every model is built once, then measured in ``--rounds`` rounds that visit the models in turn
(a few seconds each), so a machine whose speed drifts during the run (a shared VM's does, by 2x
here) slows every model alike; the table gives each model's median over the rounds and its speed
relative to tf_efficientnet_lite0 in the same round (the median of those ratios), which is the
steadier number. The first visit warms up first. Also prints the parameter count (with the
2-class head) and the input size, next to the published ImageNet-1k top-1 of the pretrained
weights graft loads for that name (timm's results and model cards, torchvision's weight metadata,
the DINOv2 paper's linear probe). Not a test: it prints measurements, it asserts nothing.

Usage: python bench/choose_model.py [--models a,b,c] [--rounds 3] [--seconds S] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from graft.models import create_model

MIN_ITERS = 2
EXTRACT_BATCH = 16
TRAIN_BATCH = 8
REFERENCE = "tf_efficientnet_lite0"
DINOV2 = "vit_small_patch14_dinov2.lvd142m"


@dataclasses.dataclass(frozen=True)
class Entry:
    arch: str
    weights: str  # where graft gets the pretrained weights
    top1: float | None  # None: read from torchvision's weight metadata
    top1_source: str
    input_size: int | None = None  # None: the model's own

    @property
    def key(self) -> str:
        return self.arch if self.input_size is None else f"{self.arch}@{self.input_size}"


MODELS = [
    Entry("tf_efficientnet_lite0", "bundled", 74.83, "timm results-imagenet.csv"),
    Entry("tf_efficientnet_lite2", "bundled", 77.46, "timm results-imagenet.csv"),
    Entry("mobilenet_v3_large", "torchvision", None, "torchvision weights meta"),
    Entry("efficientnet_b0", "torchvision", None, "torchvision weights meta"),
    Entry("resnet50", "torchvision", None, "torchvision weights meta (IMAGENET1K_V2)"),
    Entry("convnext_tiny.fb_in22k_ft_in1k", "timm", 82.90, "timm model card (224 px)"),
    Entry(DINOV2, "timm", 81.1, "DINOv2 paper, linear probe"),
    Entry(DINOV2, "timm", 81.1, "DINOv2 paper, linear probe", input_size=224),
]


def torchvision_top1(name: str) -> float:
    import torchvision

    return float(torchvision.models.get_model_weights(name).DEFAULT.meta["_metrics"]["ImageNet-1K"]["acc@1"])


def cpu_info() -> dict:
    path = Path("/proc/cpuinfo")
    text = path.read_text() if path.exists() else ""
    fields = [ln.split(":", 1) for ln in text.splitlines() if ":" in ln]
    name = next((v.strip() for k, v in fields if k.strip() == "model name"), platform.processor())
    flags = next((v.split() for k, v in fields if k.strip() == "flags"), [])
    return {"cpu": name, "avx512_bf16": "avx512_bf16" in flags}


def throughput(step: Callable[[], object], batch: int, seconds: float, warm: bool) -> float:
    """Median images/s of ``step`` (one batch) over enough calls for ``seconds`` (at least 2)."""
    if not warm:
        step()
    t0 = time.perf_counter()
    step()
    times = [time.perf_counter() - t0]
    while len(times) < MIN_ITERS or sum(times) < seconds:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


class Bench:
    """One model, built once, with its two measurements."""

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.model, spec, pre = create_model(
            entry.arch, num_classes=2, pretrained=False, input_size=entry.input_size
        )
        self.size = int(pre.input_size)
        self.timm = spec.source == "timm"
        self.params = sum(p.numel() for p in self.model.parameters()) / 1e6
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        self.x = torch.randn(EXTRACT_BATCH, 3, self.size, self.size)
        self.xt = torch.randn(TRAIN_BATCH, 3, self.size, self.size)
        self.yt = torch.randint(0, 2, (TRAIN_BATCH,))
        self.warm = False

    def body(self) -> object:
        if self.timm:
            return self.model.forward_head(self.model.forward_features(self.x), pre_logits=True)
        return self.model(self.x)

    def train_step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.xt), self.yt).backward()
        self.opt.step()

    def measure(self, seconds: float) -> tuple[float, float]:
        """(feature extraction, fine-tune step) images/s."""
        self.model.eval()
        with torch.inference_mode():
            extract = throughput(self.body, EXTRACT_BATCH, seconds, self.warm)
        self.model.train()
        train = throughput(self.train_step, TRAIN_BATCH, seconds, self.warm)
        self.warm = True
        return extract, train


def summarise(bench: Bench, rounds: list[dict[str, tuple[float, float]]]) -> dict:
    key, entry = bench.entry.key, bench.entry
    mine = [r[key] for r in rounds]
    row = {
        "model": entry.arch,
        "weights": entry.weights,
        "input_size": bench.size,
        "params_m": bench.params,
        "extract_img_s": statistics.median(m[0] for m in mine),
        "finetune_img_s": statistics.median(m[1] for m in mine),
        "rounds": [list(m) for m in mine],
        "top1": entry.top1 if entry.top1 is not None else torchvision_top1(entry.arch),
        "top1_source": entry.top1_source,
    }
    if all(REFERENCE in r for r in rounds):
        row["extract_vs_ref"] = statistics.median(r[key][0] / r[REFERENCE][0] for r in rounds)
        row["finetune_vs_ref"] = statistics.median(r[key][1] / r[REFERENCE][1] for r in rounds)
    return row


def table(rows: list[dict]) -> str:
    out = [
        "| model | weights | input px | params (M) | feature extraction img/s (× lite0) "
        "| fine-tune step img/s (× lite0) | published top-1 | source |",
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        vs = (
            (f" ({r['extract_vs_ref']:.2f}×)", f" ({r['finetune_vs_ref']:.2f}×)")
            if "extract_vs_ref" in r
            else ("", "")
        )
        out.append(
            f"| `{r['model']}` | {r['weights']} | {r['input_size']} | {r['params_m']:.1f} "
            f"| {r['extract_img_s']:.1f}{vs[0]} | {r['finetune_img_s']:.1f}{vs[1]} | {r['top1']:.2f} "
            f"| {r['top1_source']} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated subset: arch names, or arch@SIZE for one row")
    ap.add_argument("--seconds", type=float, default=2.0, help="target seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="visits of every model, interleaved")
    ap.add_argument("--json", type=Path, help="write the environment and rows to this file")
    args = ap.parse_args()

    entries = MODELS
    if args.models:
        wanted = {m.strip() for m in args.models.split(",") if m.strip()}
        entries = [e for e in MODELS if e.key in wanted or e.arch in wanted]
        unknown = wanted - {e.key for e in MODELS} - {e.arch for e in MODELS}
        if unknown or not entries:
            known = ", ".join(e.key for e in MODELS)
            sys.exit(f"unknown models: {', '.join(sorted(unknown))}; known: {known}")

    env = {"torch": torch.__version__, "python": platform.python_version(), **cpu_info()}
    env["threads"] = torch.get_num_threads()
    print(f"torch {env['torch']}, Python {env['python']}")
    print(f"CPU: {env['cpu']}; torch threads: {env['threads']}; avx512_bf16: {env['avx512_bf16']}")
    print(
        f"fp32, random weights; extraction batch {EXTRACT_BATCH}, fine-tune batch {TRAIN_BATCH}; "
        f"{args.rounds} interleaved rounds of >= {MIN_ITERS} timed steps (~{args.seconds:g} s) per "
        "model and measurement, after one warm-up step; medians\n",
        flush=True,
    )

    t_all = time.perf_counter()
    benches = [Bench(entry) for entry in entries]
    rounds: list[dict[str, tuple[float, float]]] = []
    for i in range(args.rounds):
        rounds.append({})
        for bench in benches:
            t0 = time.perf_counter()
            rounds[-1][bench.entry.key] = extract, train = bench.measure(args.seconds)
            print(
                f"round {i + 1}, {bench.entry.key}: {bench.size} px, extract {extract:.1f} img/s, "
                f"fine-tune {train:.1f} img/s, {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            gc.collect()
    rows = [summarise(bench, rounds) for bench in benches]
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
