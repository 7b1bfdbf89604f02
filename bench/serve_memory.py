"""Peak memory of ``graft serve`` under decompression-bomb-sized uploads.

Starts ``graft serve RUN`` as a subprocess and sends ``--requests`` concurrent requests, each with
``--files`` PNGs of ``--side`` x ``--side`` px (a few hundred KB each: one colour compresses well,
but each decodes to side² x 3 bytes). Samples the server's resident memory every 20 ms and
reports its peak (VmHWM) against its resident size before the load, and against what holding
every decoded image would take.

    python bench/serve_memory.py --run runs/hymenoptera        # or: --data DATA to train one first
    python bench/serve_memory.py                               # trains a tiny run on generated images
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import start_server


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/{pid}/status (this bench needs Linux)")


def tiny_run(folder: Path) -> Path:
    """A run trained in seconds on generated images (the model, not its accuracy, matters here)."""
    from graft import ImageData, Learner

    for split, n in (("train", 6), ("val", 2)):
        for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            (folder / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                shade = tuple(min(255, c + 7 * i + 60 * (split == "val")) for c in colour)
                Image.new("RGB", (64, 48), shade).save(folder / "data" / split / name / f"{i}.png")
    learn = Learner(ImageData.from_folder(folder / "data"), "tf_efficientnet_lite0", seed=0)
    learn.fit(mode="features", epochs=1, batch_size=8, workers=0, log=lambda _: None)
    return learn.save(folder / "run")


async def send(url: str, body: bytes, requests: int, files: int) -> dict[int, int]:
    codes: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=url, timeout=1800) as client:

        async def one(i: int) -> None:
            parts = [("file", (f"{i}-{j}.png", body, "image/png")) for j in range(files)]
            r = await client.post("/predict", files=parts)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

        await asyncio.gather(*(one(i) for i in range(requests)))
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, help="run folder to serve (default: train a tiny one)")
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests (default: 16)")
    parser.add_argument("--files", type=int, default=8, help="PNGs per request (default: 8)")
    parser.add_argument("--side", type=int, default=12000, help="PNG side in px (default: 12000)")
    args = parser.parse_args()
    buf = io.BytesIO()
    Image.new("RGB", (args.side, args.side), (20, 140, 60)).save(buf, format="PNG")
    body = buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or tiny_run(Path(tmp))
        proc, url = start_server(run, max_batch=16)
        try:
            before = memory_kb(proc.pid, "VmRSS")
            samples: list[int] = []
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    samples.append(memory_kb(proc.pid, "VmRSS"))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.perf_counter()
            codes = asyncio.run(send(url, body, args.requests, args.files))
            wall = time.perf_counter() - t0
            done.set()
            sampler.join()
            peak = memory_kb(proc.pid, "VmHWM")
            after = memory_kb(proc.pid, "VmRSS")
        finally:
            proc.terminate()
            proc.wait(30)
    decoded = args.requests * args.files * args.side**2 * 3 / 2**20
    print(
        f"{args.requests} concurrent requests x {args.files} PNGs of {args.side}x{args.side} "
        f"({len(body) / 1e3:.0f} KB each, {args.side**2 * 3 / 2**20:.0f} MB decoded): "
        f"status {codes}, {wall:.1f} s"
    )
    print(
        f"server resident memory: {before / 1024:.0f} MB before, peak {peak / 1024:.0f} MB "
        f"(sampled max {max(samples, default=0) / 1024:.0f} MB), {after / 1024:.0f} MB after"
    )
    print(
        f"peak growth {(peak - before) / 1024:.0f} MB vs {decoded:.0f} MB to hold every decoded image: "
        f"{decoded / max(1, (peak - before) / 1024):.1f}x less"
    )


if __name__ == "__main__":
    main()
