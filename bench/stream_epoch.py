"""Streamed vs in-memory fine-tuning of EfficientNet-Lite0 on a photo folder: does reading batches from the decoded
cache on disk (DataLoader workers, data/loader.py) hide behind the model's step?

On one folder (default: the first --photos JPEGs of a bench/scale.py folder, decoded at 224 px as the fine-tune
candidate decodes them):
1. load: the folder with an empty data root (decoding every file into the cache), then again (the cache read);
   both for the streamed source (rows stay on disk) and the in-memory one (rows read into one tensor);
2. the loader alone: streamed training batches (standard augmentation, normalised, as training receives them)
   per second, with no model;
3. the same --steps training steps (the fine-tune recipe's model, bf16 autocast where the CPU has it, batch 32)
   fed by the in-memory batches (baseline), then by the streamed ones: seconds and the ratio streamed / in-memory.

Prints one JSON line. Usage: .venv/bin/python bench/stream_epoch.py --folder DIR --work DIR [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from cnnlab.config import DataConfig
from cnnlab.data.augment import policy_for
from cnnlab.data.batches import InMemoryBatches, Normalization
from cnnlab.data.sources import load_source
from cnnlab.machine import CpuInfo
from finetune_speed import cnnlab_step  # bench/finetune_speed.py: the fine-tune recipe's training step

BATCH = 32


def timed_load(folder: Path, root: Path, stream: bool):
    start = time.perf_counter()
    source = load_source(DataConfig(source=f"folder:{folder}", root=str(root), image_size=224, crop_pct=0.875,
                                    stream=stream))  # fmt: skip
    return source, round(time.perf_counter() - start, 1)


def batches(source, steps: int) -> InMemoryBatches:
    norm = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    idx = source.partitions["train"][: steps * BATCH]
    made = InMemoryBatches(source.images, source.labels, idx, batch_size=BATCH, norm=norm, shuffle=True, seed=0,
                           drop_last=True, policy=policy_for("standard", flip_invariant=True))  # fmt: skip
    made.set_epoch(1)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    root = args.work / "root"
    shutil.rmtree(root, ignore_errors=True)
    loads = {}
    streamed, loads["stream_first_s"] = timed_load(args.folder, root, True)
    _, loads["stream_cached_s"] = timed_load(args.folder, root, True)
    memory, loads["in_memory_cached_s"] = timed_load(args.folder, root, False)
    start = time.perf_counter()
    n = sum(len(x) for x, _ in batches(streamed, args.steps))
    loader_rate = n / (time.perf_counter() - start)
    classes = len(memory.class_names)
    cpu = CpuInfo.here()
    seconds = {}
    for name, source in (("in_memory", memory), ("streamed", streamed)):
        torch.manual_seed(0)
        step = cnnlab_step(classes, cpu.bf16)
        made = batches(source, args.steps)
        start = time.perf_counter()
        for x, y in made:
            step(x, y)
        seconds[name] = time.perf_counter() - start
    model_rate = args.steps * BATCH / seconds["in_memory"]
    print(json.dumps({
        "bench": "stream_epoch", "photos": len(memory.labels), "cpu": cpu.name, "capability": cpu.capability,
        "bf16": cpu.bf16, "threads": os.cpu_count(), "steps": args.steps, "batch": BATCH, **loads,
        "loader_images_per_s": round(loader_rate, 1), "model_images_per_s": round(model_rate, 1),
        "loader_over_model": round(loader_rate / model_rate, 2),
        "in_memory_s": round(seconds["in_memory"], 1), "streamed_s": round(seconds["streamed"], 1),
        "ratio_streamed_over_in_memory": round(seconds["streamed"] / seconds["in_memory"], 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
