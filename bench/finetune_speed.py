"""Fine-tuning EfficientNet-Lite0 at 224 px: cnnlab's recipe vs a plain timm training step, images/s in one run.

- baseline: timm's model as timm's train.py trains it by default: every layer, fp32, NCHW, AdamW, batch norm in
  training mode; and the same with its speed flags (`--amp --amp-dtype bfloat16 --channels-last`) where bf16 is
  native;
- cnnlab: the model `--strategy fine-tune` (and the model search) builds: the first quarter of timm's layer groups
  kept as pretrained, ImageNet batch-norm statistics, channels_last, layer-wise AdamW groups, and bf16 autocast
  where the CPU runs bf16 natively (the precision `auto` picks on such CPUs; fp32 elsewhere).

Same images (random, fixed seed), same batch; the median of the timed steps after warm-up. Prints one JSON line
with both rates and their ratio.

Usage: .venv/bin/python bench/finetune_speed.py [--batch 64] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch
import torch.nn.functional as F

from cnnlab.config import TrainConfig
from cnnlab.machine import CpuInfo
from cnnlab.models import create_model
from cnnlab.models.pretrained import load_pretrained
from cnnlab.training.fit import build_optimizer

WARMUP = 2


def images_per_s(step, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    times = []
    for _ in range(steps + WARMUP):
        start = time.perf_counter()
        step(x, y)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    measured = sorted(times[WARMUP:])
    return len(x) / measured[len(measured) // 2]


def timm_step(batch_classes: int, *, fast: bool = False, device: str = "cpu"):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=batch_classes).train().to(device)
    layout = torch.channels_last if fast else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x, y):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=fast):
            loss = F.cross_entropy(model(x.contiguous(memory_format=layout)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def cnnlab_step(batch_classes: int, bf16: bool, device: str = "cpu", pretrained: bool = True):
    model = create_model("efficientnet_lite0", num_classes=batch_classes, in_channels=3, image_size=224,
                         options={}, strategy="fine-tune")  # fmt: skip
    if pretrained:
        load_pretrained(model)
    model = model.to(device, memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3))

    def step(x, y):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.compute_loss(model(x.contiguous(memory_format=torch.channels_last)), y, 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 3, 224, 224), torch.randint(0, 8, (args.batch,))
    cpu = CpuInfo.here()
    baseline = images_per_s(timm_step(8), x, y, args.steps)
    flagged = images_per_s(timm_step(8, fast=cpu.bf16), x, y, args.steps)
    ours = images_per_s(cnnlab_step(8, cpu.bf16), x, y, args.steps)
    print(json.dumps({
        "bench": "finetune_speed", "model": "efficientnet_lite0", "image_size": 224, "batch": args.batch,
        "threads": torch.get_num_threads(), "cpu": cpu.name, "cpu_capability": cpu.capability, "bf16": cpu.bf16,
        "timm_plain_images_per_s": round(baseline, 1), "timm_amp_channels_last_images_per_s": round(flagged, 1),
        "cnnlab_images_per_s": round(ours, 1), "ratio": round(ours / baseline, 2),
        "ratio_vs_timm_flags": round(ours / flagged, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
