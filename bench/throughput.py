"""Training throughput of cnnlab's recipes against this machine's measured peak, in one run.

Peaks: a large GEMM and a representative channels_last 3x3 conv (forward+backward), fp32 and bf16.
Recipes: the default model (simple_cnn_bn), the course CNN (simple_cnn) and the larger recipe's residual
net (resnet_small), trained through cnnlab's in-memory batches (augmentation included) at batch 256 on real
Fashion-MNIST images, in fp32 and, where this CPU runs bf16 natively, bf16 autocast. The default model in
the precision `--precision auto` picks here is also run contiguous (not channels_last), on one thread, and
under torch.compile (compile time excluded): the other speed knobs, each as a ratio to the default.
FLOPs per step come from torch.utils.flop_counter. Prints one JSON line; `fraction_of_conv_peak` is the
target's ratio (against the conv peak of the same precision).

Usage: .venv/bin/python bench/throughput.py [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.config import DataConfig, TrainConfig
from cnnlab.data.augment import policy_for
from cnnlab.data.batches import InMemoryBatches, Normalization
from cnnlab.data.sources import load_source
from cnnlab.machine import CpuInfo
from cnnlab.models import create_model
from cnnlab.training.fit import build_optimizer
from cnnlab.training.precision import BF16, FP32, auto_precision


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: allocation, kernel choice
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def gemm_peak(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / _timed(lambda: a @ b, 5) / 1e9


def conv_peak(dtype: torch.dtype) -> float:
    """GFLOP/s of forward+backward of a 64->64 3x3 conv on 64 x 28 x 28 maps, batch 128, channels_last."""
    x = torch.randn(128, 64, 28, 28, dtype=dtype).to(memory_format=torch.channels_last).requires_grad_()
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dtype=dtype, memory_format=torch.channels_last)

    def step():
        conv(x).sum().backward()

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / _timed(step, 5) / 1e9


def recipe_throughput(
    name: str,
    source,
    steps: int,
    *,
    batch: int = 256,
    precision: str = FP32,
    compiled: bool = False,
    channels_last: bool = True,
    threads: int | None = None,
) -> dict:
    """Images/s and GFLOP/s of training steps of `name` through cnnlab's in-memory batches."""
    idx = source.partitions["train"][: batch * (steps + 2)]
    norm = Normalization.from_images(source.images[idx])
    batches = InMemoryBatches(
        source.images, source.labels, idx, batch_size=batch, norm=norm, shuffle=True,
        policy=policy_for("light", flip_invariant=True), drop_last=True,
    )  # fmt: skip
    layout = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).to(memory_format=layout).train()
    optimizer = build_optimizer(model, TrainConfig())
    data = [(x.contiguous(memory_format=layout), y) for x, y in batches]
    run = torch.compile(model) if compiled else model
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)

    def step(x, y, counted=run):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == BF16):
            loss = F.cross_entropy(counted(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        with FlopCounterMode(display=False) as counter:
            step(*data[0], counted=model)  # eager: the same FLOPs, counted without tracing the compiler
        flops = counter.get_total_flops()
        step(*data[1])  # warm-up (and the one-off compilation)
        start = time.perf_counter()
        for x, y in batches:  # includes the batch assembly: index, augment, normalise
            step(x.contiguous(memory_format=layout), y)
        seconds = (time.perf_counter() - start) / len(batches)
    finally:
        torch.set_num_threads(before)
    return {"images_per_s": round(batch / seconds), "gflop_per_step": round(flops / 1e9, 2),
            "gflops": round(flops / seconds / 1e9, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    source = load_source(DataConfig(source="fashion-mnist"))
    cpu = CpuInfo.here()
    precisions = (FP32, BF16) if cpu.bf16 else (FP32,)
    peaks = {"gemm_fp32": gemm_peak(torch.float32), "conv_fp32": conv_peak(torch.float32)}
    # bf16 without native kernels (AVX2-only CPUs) runs ~100x slower: a smaller GEMM keeps the bench short
    peaks.update(gemm_bf16=gemm_peak(torch.bfloat16, n=2048 if cpu.bf16 else 512), conv_bf16=conv_peak(torch.bfloat16))
    chosen = auto_precision("simple_cnn_bn", batch=256)
    result = {
        "bench": "throughput", "cpu": cpu.name, "capability": cpu.capability, "native_bf16": cpu.bf16,
        "threads": torch.get_num_threads(), "batch": 256, "precision_chosen": chosen,
        "peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
    }  # fmt: skip
    for name in ("simple_cnn_bn", "simple_cnn", "resnet_small"):
        for precision in precisions:
            r = recipe_throughput(name, source, args.steps, precision=precision)
            r["fraction_of_conv_peak"] = round(r["gflops"] / peaks[_peak_key(precision)], 3)
            result[f"{name}_{precision}"] = r
    default = result[f"simple_cnn_bn_{chosen}"]["images_per_s"]
    variants = {
        "contiguous": {"channels_last": False}, "one_thread": {"threads": 1}, "compiled": {"compiled": True},
    }  # fmt: skip
    for label, options in variants.items():
        r = recipe_throughput("simple_cnn_bn", source, args.steps, precision=chosen, **options)
        result[f"simple_cnn_bn_{chosen}_{label}"] = r
        result[f"{label}_vs_default"] = round(r["images_per_s"] / default, 2)
    if cpu.bf16:
        result["bf16_vs_fp32"] = round(default / result[f"simple_cnn_bn_{FP32}"]["images_per_s"], 2)
    print(json.dumps(result))


def _peak_key(precision: str) -> str:
    return "conv_bf16" if precision == BF16 else "conv_fp32"


if __name__ == "__main__":
    main()
