"""Load test of ``graft serve`` on loopback: latency percentiles, throughput, and what batching buys.

Starts ``graft serve RUN`` as a subprocess, sends N ``POST /predict`` requests (one real photo
each) at a fixed concurrency, and reports p50/p99 latency, requests per second and status codes.
It does so twice in one run, with cross-request batching (``--max-batch 16``) and without it
(``--max-batch 1``), and prints the throughput ratio.

    python bench/serve_load.py --run runs/hymenoptera          # or: --data DATA to train one first
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "graft",
        "serve",
        str(run),
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"graft serve did not start: {proc.stderr.read().decode()[-2000:]}")


async def load(url: str, images: list[tuple[str, bytes]], requests: int, concurrency: int) -> dict:
    limit = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    codes: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(i: int) -> None:
            name, body = images[i % len(images)]
            async with limit:
                t0 = time.perf_counter()
                r = await client.post("/predict", files=[("file", (name, body, "image/jpeg"))])
                latencies.append(time.perf_counter() - t0)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        await one(0)  # warm-up, not counted
        latencies.clear()
        codes.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": requests,
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "throughput_rps": round(requests / wall, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "codes": codes,
        "errors_5xx": sum(n for c, n in codes.items() if c >= 500),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, help="run folder to serve (default: train one on --data)")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="dataset for the images (and training)"
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    photos = sorted((args.data / "val").rglob("*.jpg"))[:50] or sorted(args.data.rglob("*.jpg"))[:50]
    images = [(p.name, p.read_bytes()) for p in photos]
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            train = [sys.executable, "-m", "graft", "train", str(args.data), "--out", str(run), "--no-report"]
            subprocess.run(train, check=True, stdout=subprocess.DEVNULL)
        results = {}
        for name, max_batch in (("batched", 16), ("unbatched", 1)):
            proc, url = start_server(run, max_batch)
            try:
                results[name] = asyncio.run(load(url, images, args.requests, args.concurrency))
            finally:
                proc.terminate()
                proc.wait(30)
            r = results[name]
            print(
                f"{name:>9} (--max-batch {max_batch:>2}): {r['requests']} requests at concurrency "
                f"{r['concurrency']}: {r['throughput_rps']} req/s, p50 {r['p50_ms']} ms, "
                f"p99 {r['p99_ms']} ms, status {r['codes']}, 5xx {r['errors_5xx']}"
            )
    ratio = results["batched"]["throughput_rps"] / results["unbatched"]["throughput_rps"]
    results["throughput_ratio_batched_vs_unbatched"] = round(ratio, 2)
    print(
        f"throughput, batched / unbatched: {ratio:.2f}x ({len(images)} distinct photos from {args.data.name})"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
