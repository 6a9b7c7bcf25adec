"""cnnlab's speed targets on one CUDA GPU, in one go: one JSON line with the times to target.

1. Fashion-MNIST, the default recipe (`simple_cnn_bn`, the 5-minute recipe's planner) with `--fashion-minutes`
   (default 3): seconds to 93%, 93.5%, 94% test accuracy (plain and with test-time flips);
2. CIFAR-10 to 94% with the larger recipe (`resnet_small`, recipes/fashion-large.yaml's training settings) for
   `--cifar-minutes` (default 4), only when its files are in data/cifar-10-batches-py (skipped otherwise: the
   GPU machine cannot download);
3. EfficientNet-Lite0 fine-tuning at 224 px: cnnlab's step vs timm's own (plain, and with bf16 autocast and
   channels_last), images/s at batch 256.

Each part's budget is fixed up front, so the whole script ends within about 10 minutes of GPU time (the issue
allows 15). Nothing is installed beyond `make demo`'s set-up; `--cpu-check` shrinks every part to seconds so the
script can be checked on a machine without a GPU.

Usage: sh bench/gpu.sh  (or .venv/bin/python bench/gpu.py [--fashion-minutes 3] [--cifar-minutes 4] [--cpu-check])
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from cnnlab.config import DataConfig, TrainConfig
from cnnlab.data.sources import load_source
from cnnlab.errors import CnnlabError
from cnnlab.machine import CpuInfo
from cnnlab.training.precision import auto_precision

sys.path.insert(0, str(Path(__file__).parent))  # the other benchmarks' recipes and timers
from finetune_speed import cnnlab_step, images_per_s, timm_step  # noqa: E402
from time_to_accuracy import cnnlab_recipe, large_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FASHION_TARGETS = (0.93, 0.935, 0.94)
CIFAR_TARGET = 0.94


def seconds_to(history: list[tuple], targets: tuple[float, ...], column: int = 1) -> dict[str, float | None]:
    return {f"{100 * t:g}%": next((round(h[0], 1) for h in history if h[column] >= t), None) for t in targets}


def fashion(minutes: float) -> dict:
    source = load_source(DataConfig(source="fashion-mnist"))
    t = TrainConfig(batch_size=128, budget_minutes=minutes, precision=auto_precision("simple_cnn_bn", batch=128))
    history = cnnlab_recipe(source, "simple_cnn_bn", t)
    return {"minutes": minutes, "precision": t.precision, "epochs": len(history), "seconds": round(history[-1][0], 1),
            "best": max(h[1] for h in history), "best_with_tta": max(h[2] for h in history),
            "seconds_to": seconds_to(history, FASHION_TARGETS),
            "seconds_to_with_tta": seconds_to(history, FASHION_TARGETS, column=2)}  # fmt: skip


def cifar(minutes: float) -> dict:
    if not (ROOT / "data" / "cifar-10-batches-py" / "test_batch").is_file():
        return {"skipped": "no CIFAR-10 files in data/cifar-10-batches-py (carry them to run this part)"}
    source = load_source(DataConfig(source="cifar10", root=str(ROOT / "data")))
    t = replace(large_recipe(minutes), precision=auto_precision("resnet_small", batch=256))
    history = cnnlab_recipe(source, "resnet_small", t)
    return {"minutes": minutes, "model": "resnet_small", "precision": t.precision, "epochs": len(history),
            "seconds": round(history[-1][0], 1), "best": max(h[1] for h in history),
            "best_with_tta": max(h[2] for h in history), "seconds_to": seconds_to(history, (CIFAR_TARGET,)),
            "seconds_to_with_tta": seconds_to(history, (CIFAR_TARGET,), column=2)}  # fmt: skip


def finetune(device: str, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 224, 224, device=device), torch.randint(0, 8, (batch,), device=device)
    bf16 = torch.cuda.is_bf16_supported() if device == "cuda" else CpuInfo.here().bf16
    plain = images_per_s(timm_step(8, device=device), x, y, steps)
    flagged = images_per_s(timm_step(8, fast=bf16, device=device), x, y, steps)
    try:
        ours, weights = images_per_s(cnnlab_step(8, bf16, device=device), x, y, steps), "ImageNet"
    except CnnlabError:  # no offline weights on this machine: the step costs the same from random weights
        ours, weights = images_per_s(cnnlab_step(8, bf16, device=device, pretrained=False), x, y, steps), "random"
    return {"batch": batch, "bf16": bf16, "weights": weights, "timm_plain_images_per_s": round(plain, 1),
            "timm_amp_channels_last_images_per_s": round(flagged, 1), "cnnlab_images_per_s": round(ours, 1),
            "ratio_vs_timm_flags": round(ours / flagged, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion-minutes", type=float, default=3.0)
    parser.add_argument("--cifar-minutes", type=float, default=4.0)
    parser.add_argument("--cpu-check", action="store_true", help="tiny budgets, on the CPU: the script runs")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_check:
        sys.exit("bench/gpu.py: no CUDA device visible (run it on a GPU machine, or --cpu-check to try it here)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    small = args.cpu_check
    started = time.perf_counter()
    result = {
        "bench": "gpu", "device": torch.cuda.get_device_name(0) if device == "cuda" else CpuInfo.here().name,
        "torch": torch.__version__, "cpu_check": small,
        "fashion": fashion(0.1 if small else args.fashion_minutes),
        "cifar10": cifar(0.1 if small else args.cifar_minutes),
        "finetune": finetune(device, 8 if small else 256, 2 if small else 10),
    }  # fmt: skip
    result["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
