"""`cnnlab benchmark RUN`: the table a person deploying a model to a device wants. Per backend, latency at
batch 1 (p50/p95) and throughput at batch 64, on the run's own test images and the stated thread count,
and whether a latency budget is met at p95.

Backends: `eager` (the model as PyTorch loads it: NCHW, no folding), `torch` (batch norm folded,
channels_last), `onnx` (ONNX Runtime, fp32, the file `auto` keeps in RUN/cache/), `onnx-file` and `onnx-int8`
(RUN's `cnnlab export` and `cnnlab export --int8` files, when there are; with the run's test-time flips inside
where it uses them, so the int8 file is timed against the fp32 file it was made from). Times cover the model
only: images are decoded and normalised beforehand, as a device pipeline would feed them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.data.lazy import select
from cnnlab.data.splits import load_splits
from cnnlab.export.exporter import read_exports
from cnnlab.extras import ONNX_PACKAGES, require
from cnnlab.files import write_text_atomic
from cnnlab.machine import CpuInfo
from cnnlab.predict.backends import choose_backend, kept_onnx_path, onnx_file, torch_forward
from cnnlab.predict.infer import open_trained_run
from cnnlab.predict.onnx import open_session
from cnnlab.runs import RunFile

LATENCY_S = 1.5  # time spent on batch-1 calls per backend (at least MIN_CALLS calls)
MIN_CALLS = 30
THROUGHPUT_BATCH = 64
THROUGHPUT_S = 0.5  # per timed pass; the best of 3 passes counts
EXPORTED = {"onnx-file": "model.onnx", "onnx-int8": "model.int8.onnx"}  # what `cnnlab export RUN` (--int8) writes


@dataclass
class Row:
    backend: str
    p50_ms: float
    p95_ms: float
    images_per_s: float
    meets_budget: bool | None = None


def benchmark_run(
    run_dir: Path, *, threads: int | None = None, latency_budget_ms: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Measure every available backend of `run_dir`'s best.pt; print the table, write RUN/benchmark.json."""
    require(*ONNX_PACKAGES, purpose="cnnlab benchmark")
    model, sample = _model_and_images(Path(run_dir))
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure_all(run_dir, model, sample, threads, latency_budget_ms, log)
    finally:
        torch.set_num_threads(before)  # a caller in the same process keeps its own setting


def _measure_all(run_dir, model, sample, threads, latency_budget_ms, log) -> dict[str, Any]:
    cache = Path(run_dir) / "cache"
    backends = _backends(model, onnx_file(model, sample, kept_onnx_path(Path(run_dir) / RunFile.BEST, cache), log),
                         Path(run_dir), threads)  # fmt: skip
    default = choose_backend(model, Path(run_dir) / RunFile.BEST, sample, n_images=10**6, cache_dir=cache, log=log)
    rows = [_measure(name, forward, sample, latency_budget_ms) for name, forward in backends.items()]
    result = {
        "run": str(run_dir), "threads": torch.get_num_threads(), "onnxruntime_threads": threads or "default",
        "image": list(sample.shape[1:]), "default": {"backend": default.name, "why": default.why},
        "latency_budget_ms": latency_budget_ms, "rows": [asdict(r) for r in rows], **_machine(),
        "flips_inside": _flips_inside(Path(run_dir)),
    }  # fmt: skip
    write_text_atomic(Path(run_dir) / RunFile.BENCHMARK, json.dumps(result, indent=2))
    log(format_table(result))
    return result


def _model_and_images(run_dir: Path) -> tuple[nn.Module, torch.Tensor]:
    """The run's model and THROUGHPUT_BATCH of its test images, normalised as in training."""
    run = open_trained_run(run_dir)
    idx = load_splits(run_dir / RunFile.SPLITS, run.source)["test"][:THROUGHPUT_BATCH]
    images = run.checkpoint.preprocessing.normalization().apply(select(run.source.images, idx)[: len(idx)])
    return run.model, images.float()


def _backends(model: nn.Module, onnx: Path, run_dir: Path, threads: int | None) -> dict[str, Callable]:
    """name -> a callable on a normalised float batch, in the layout each backend runs fastest with."""
    folded = torch_forward(model)
    found = {
        "eager": lambda x: model(x),
        "torch": lambda x: folded(x.contiguous(memory_format=torch.channels_last)),
        "onnx": _onnx_call(open_session(onnx, threads=threads)),
    }
    for name, file in EXPORTED.items():
        if (run_dir / file).is_file():
            found[name] = _onnx_call(open_session(run_dir / file, threads=threads))
    return found


def _onnx_call(session) -> Callable:
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def _measure(name: str, forward: Callable, images: torch.Tensor, budget_ms: float | None) -> Row:
    with torch.inference_mode():
        singles = [images[i : i + 1].contiguous() for i in range(len(images))]
        for x in singles[:10]:
            forward(x)  # warm-up
        latencies, started = [], time.perf_counter()
        while len(latencies) < MIN_CALLS or time.perf_counter() - started < LATENCY_S:
            x = singles[len(latencies) % len(singles)]
            t = time.perf_counter()
            forward(x)
            latencies.append(time.perf_counter() - t)
        forward(images)
        passes = [_pass(forward, images) for _ in range(3)]
    p50, p95 = (float(np.percentile(latencies, q) * 1000) for q in (50, 95))
    meets = None if budget_ms is None else p95 <= budget_ms
    return Row(name, round(p50, 3), round(p95, 3), round(max(passes)), meets)


def _pass(forward: Callable, images: torch.Tensor) -> float:
    runs, started = 0, time.perf_counter()
    while runs < 1 or time.perf_counter() - started < THROUGHPUT_S:
        forward(images)
        runs += 1
    return runs * len(images) / (time.perf_counter() - started)


def _flips_inside(run_dir: Path) -> list[str]:
    """The rows of exported files that hold test-time flips (two views per image: twice the model's work)."""
    exports = read_exports(run_dir / RunFile.EXPORT)
    return [name for name, f in EXPORTED.items() if (run_dir / f).is_file() and exports.get(f, {}).get("tta")]


def _machine() -> dict[str, str]:
    cpu = CpuInfo.here()
    return {"cpu": cpu.name, "capability": cpu.capability, "torch": torch.__version__}


def format_table(r: dict[str, Any]) -> str:
    """The benchmark as a fixed-width table, then the default backend and the budget verdict."""
    budget = r["latency_budget_ms"]
    head = f"{'backend':<10} {'p50 ms':>8} {'p95 ms':>8} {'images/s @64':>13}" + ("  budget" if budget else "")
    lines = [
        f"{r['cpu']} ({r['capability']}), torch threads {r['threads']}, ONNX Runtime threads "
        f"{r['onnxruntime_threads']}; image {'x'.join(map(str, r['image']))}; batch 1 latency, batch 64 throughput",
        head,
    ]
    for row in r["rows"]:
        verdict = "" if budget is None else ("  met" if row["meets_budget"] else "  MISSED")
        lines.append(
            f"{row['backend']:<10} {row['p50_ms']:>8.3f} {row['p95_ms']:>8.3f} {row['images_per_s']:>13,.0f}{verdict}"
        )
    if r.get("flips_inside"):
        lines.append(f"{', '.join(r['flips_inside'])}: test-time flips inside (each image and its "
                     "mirror: twice the work of the rows above)")  # fmt: skip
    lines.append(f"default prediction backend: {r['default']['backend']} ({r['default']['why']})")
    if budget is not None:
        met = [row["backend"] for row in r["rows"] if row["meets_budget"]]
        lines.append(f"latency budget {budget:g} ms (p95, batch 1): met by {', '.join(met) or 'none'}")
    return "\n".join(lines)


def meets_latency_budget(result: dict[str, Any], log: Callable[[str], None] = print) -> bool:
    """Whether the default prediction backend meets the result's latency budget (True when none was set)."""
    default = next((r for r in result["rows"] if r["backend"] == result["default"]["backend"]), None)
    if result.get("latency_budget_ms") is None or default is None or default["meets_budget"]:
        return True
    log(f"the default backend ({default['backend']}) misses the latency budget")
    return False
