"""Load test of `cnnlab serve`, loopback only: N requests from C concurrent clients against a real server
(a subprocess), reporting requests/s, p50/p95 latency and failures. Baseline in the same run: the same answer
computed in-process (`apps.serve.answer`, no HTTP), one after another; `ratio` = served / in-process.

Targets: a run folder (--run; default: a `cnn` trained for 4 epochs on the real 8x8 digits) and, with
--backbone, the ImageNet backbone (224 px, Grad-CAM and the dog app on every request). Usage:
.venv/bin/python bench/serve.py [--run RUN] [--backbone efficientnet_lite0] [--requests 200] [--clients 8]
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from cnnlab.machine import CpuInfo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upload() -> bytes:
    """A real photo (scikit-image's coffee), as a JPEG a phone would send, 400x600."""
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.coffee()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _in_process(target: str, data: bytes, n: int) -> float:
    from cnnlab.apps.serve import answer, open_servable

    servable = open_servable(target)
    answer(servable, data)  # warm
    start = time.perf_counter()
    for _ in range(n):
        answer(servable, data)
    return n / (time.perf_counter() - start)


def _served(target: str, data: bytes, n: int, clients: int) -> dict:
    port = _free_port()
    cmd = [sys.executable, "-m", "cnnlab.cli", "serve", target, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/predict"
    try:
        for _ in range(240):
            try:
                httpx.get(url.replace("predict", "info"), timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
            client.post(url, files={"file": ("warm.jpg", data, "image/jpeg")})

            def one(_i: int) -> tuple[float, bool]:
                t = time.perf_counter()
                try:
                    ok = client.post(url, files={"file": ("coffee.jpg", data, "image/jpeg")}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                return time.perf_counter() - t, ok

            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(one, range(n)))
            wall = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    latency = np.array([r[0] for r in results]) * 1000
    return {"requests": n, "clients": clients, "failed": sum(not r[1] for r in results),
            "requests_per_s": round(n / wall, 1), "p50_ms": round(float(np.percentile(latency, 50)), 1),
            "p95_ms": round(float(np.percentile(latency, 95)), 1)}  # fmt: skip


def _digits_run() -> str:
    from cnnlab.config import RunConfig, with_overrides
    from cnnlab.pipeline import train

    cfg = with_overrides(RunConfig(), "data", source="digits")
    cfg = with_overrides(cfg, "model", name="cnn", options={"widths": [16, 32]})
    cfg = with_overrides(cfg, "train", epochs=4)
    return str(train(cfg, runs_dir=Path(tempfile.mkdtemp()), name="d", log=lambda _: None, report=False).run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run")
    parser.add_argument("--backbone")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    data = _upload()
    cpu = CpuInfo.here()
    for target in [args.run or _digits_run(), *([args.backbone] if args.backbone else [])]:
        served = _served(target, data, args.requests, args.clients)
        baseline = _in_process(target, data, min(args.requests, 50))
        print(json.dumps({
            "bench": "serve", "target": target, "cpu": cpu.name, "capability": cpu.capability,
            "threads": torch.get_num_threads(), "upload_bytes": len(data), **served,
            "in_process_per_s": round(baseline, 1), "ratio": round(served["requests_per_s"] / baseline, 2),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
