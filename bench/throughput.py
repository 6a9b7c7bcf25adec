"""Training throughput of cnnlab's recipes against this machine's measured peak, in one run.

Peaks: a large fp32 GEMM and a representative channels_last 3x3 conv (forward+backward), fp32 and bf16.
Recipes: the default model (simple_cnn_bn), the course CNN (simple_cnn) and the larger recipe's residual
net (resnet_small), trained through cnnlab's in-memory batches (augmentation included) at batch 256 on real
Fashion-MNIST images; the default model also under torch.compile (`--compile`), compile time excluded.
FLOPs per step come from torch.utils.flop_counter. Prints one JSON line; `fraction_of_conv_peak` is the
target's ratio, `compiled_vs_eager` the speed-up of --compile.

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
from cnnlab.engine.fit import build_optimizer
from cnnlab.models import create_model


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


def recipe_throughput(name: str, source, steps: int, batch: int = 256, compiled: bool = False) -> dict:
    idx = source.partitions["train"][: batch * (steps + 2)]
    norm = Normalization.from_images(source.images[idx])
    batches = InMemoryBatches(
        source.images, source.labels, idx, batch_size=batch, norm=norm, shuffle=True,
        policy=policy_for("light", flip_invariant=True), drop_last=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).to(memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model, TrainConfig())
    data = list(batches)
    run = torch.compile(model) if compiled else model

    def step(x, y, counted=run):
        loss = F.cross_entropy(counted(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step(*data[0], counted=model)  # eager: the same FLOPs, counted without tracing the compiler
    flops = counter.get_total_flops()
    step(*data[1])  # warm-up (and the one-off compilation)
    start = time.perf_counter()
    for b in batches:  # includes the batch assembly: index, augment, normalise
        step(*b)
    seconds = (time.perf_counter() - start) / len(batches)
    return {
        "images_per_s": round(batch / seconds),
        "gflop_per_step": round(flops / 1e9, 2),
        "gflops": flops / seconds / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    source = load_source(DataConfig(source="fashion-mnist"))
    peaks = {
        "gemm_fp32": gemm_peak(torch.float32), "conv_fp32": conv_peak(torch.float32),
        # bf16 without native instructions (AVX2-only CPUs) runs ~100x slower: a smaller GEMM keeps the bench short
        "gemm_bf16": gemm_peak(torch.bfloat16, n=512), "conv_bf16": conv_peak(torch.bfloat16),
    }  # fmt: skip
    result = {"bench": "throughput", "threads": torch.get_num_threads(), "batch": 256, "precision": "fp32"}
    result["peak_gflops"] = {k: round(v, 1) for k, v in peaks.items()}
    for name, compiled in (("simple_cnn_bn", False), ("simple_cnn", False), ("resnet_small", False),
                           ("simple_cnn_bn", True)):  # fmt: skip
        r = recipe_throughput(name, source, args.steps, compiled=compiled)
        r["fraction_of_conv_peak"] = round(r["gflops"] / peaks["conv_fp32"], 3)
        r["gflops"] = round(r["gflops"], 1)
        result[name + ("_compiled" if compiled else "")] = r
    eager, fast = result["simple_cnn_bn"]["images_per_s"], result["simple_cnn_bn_compiled"]["images_per_s"]
    result["compiled_vs_eager"] = round(fast / eager, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
