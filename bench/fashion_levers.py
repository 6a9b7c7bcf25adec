"""Two of the speed records' levers for `--budget-minutes 30` on Fashion-MNIST, measured against the recipe as it
is in one run: an exponential moving average (EMA) of the weights, and progressive resizing.

The larger recipe (`resnet_small`, SGD-nesterov one-cycle peak 0.1, label smoothing 0.1, batch 256, light
augmentation, bf16 autocast where the CPU runs it natively) trains for --minutes of wall time, its epochs
planned from a probe of each image side it uses. Alongside the trained weights, EMAs of them (torch's
`AveragedModel` with `get_ema_multi_avg_fn`, buffers averaged too) are kept at each of --decays, updated every
step. At the end each is scored on the test split with test-time flips (the mean softmax of each image and its
mirror image, as `cnnlab evaluate` does); `ema_gain` is each EMA's test accuracy minus the trained weights' (a
paired comparison: same run, same data order).

With --sides 20,24,28 the epochs are split into equal thirds at those sides (batches resized with antialiased
bilinear interpolation; the last third at the images' own 28 px), so more epochs fit in the same minutes; compare
its `test_last` with a run without --sides (the recipe at full size) at the same --minutes and seed. (What this
measured made progressive resizing part of the larger recipe: training/progressive.py, same sides.)

Usage: .venv/bin/python bench/fashion_levers.py [--minutes 28.5] [--seed 0] [--sides 20,24,28]
       [--decays 0.99,0.998,0.9995]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnnlab.config import DataConfig, TrainConfig
from cnnlab.data.augment import policy_for
from cnnlab.data.batches import InMemoryBatches, Normalization
from cnnlab.data.sources import load_source
from cnnlab.data.splits import make_splits
from cnnlab.models import create_model
from cnnlab.predict.infer import mean_of_views
from cnnlab.training.auto import LARGE_MODEL, LARGE_RECIPE
from cnnlab.training.fit import build_optimizer, build_scheduler

PROBE_STEPS = 6


def step(model, optimizer, x, y, smoothing: float) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.compute_loss(model(x), y, smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def step_seconds(model, t: TrainConfig, batches, side: int) -> float:
    """Median seconds of a training step at `side` px, on a throwaway copy of the model."""
    probe = AveragedModel(model).module  # a deep copy
    optimizer = build_optimizer(probe, t)
    times = []
    batches.set_side(side)  # cnnlab's progressive resizing: the batch scaled after augmentation
    with torch.random.fork_rng(devices=[]):
        for x, y in itertools.islice(iter(batches), PROBE_STEPS + 2):
            start = time.perf_counter()
            step(probe, optimizer, x, y, t.label_smoothing)
            times.append(time.perf_counter() - start)
    return sorted(times[2:])[len(times[2:]) // 2]


@torch.inference_mode()
def logits_of(model, batches, *, flips: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every batch: the mean of each image's and its mirror image's softmax with `flips`."""
    model.eval()
    out, ys = [], []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for x, y in batches:
            out.append(mean_of_views(model(x).float(), model(x.flip(-1)).float()) if flips else model(x).float())
            ys.append(y)
    return torch.cat(out), torch.cat(ys)


def accuracy(model, batches) -> float:
    logits, y = logits_of(model, batches)
    return float((logits.argmax(1) == y).double().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=28.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sides", default="28")
    ap.add_argument("--decays", default="0.99,0.998,0.9995")
    args = ap.parse_args()
    sides = [int(s) for s in args.sides.split(",")]
    decays = [float(d) for d in args.decays.split(",")]

    source = load_source(DataConfig(source="fashion-mnist"))
    splits = make_splits(source.labels.numpy(), source.partitions, valid_fraction=0.2, test_fraction=0.0,
                         seed=args.seed)  # fmt: skip
    norm = Normalization.from_images(source.images[splits["train"]])
    t = TrainConfig(**{**LARGE_RECIPE, "schedule": "onecycle", "seed": args.seed})
    policy = policy_for("light", flip_invariant=True)
    train = InMemoryBatches(source.images, source.labels, splits["train"], batch_size=t.batch_size, norm=norm,
                            shuffle=True, policy=policy, seed=args.seed, drop_last=True)  # fmt: skip
    valid = InMemoryBatches(source.images, source.labels, splits["valid"], batch_size=1000, norm=norm)
    test = InMemoryBatches(source.images, source.labels, splits["test"], batch_size=1000, norm=norm)
    torch.manual_seed(args.seed)
    model = create_model(LARGE_MODEL, num_classes=10, in_channels=1, image_size=28).to(
        memory_format=torch.channels_last
    )

    start = time.perf_counter()
    step_s = {side: step_seconds(model, t, train, side) for side in sorted(set(sides))}
    v0 = time.perf_counter()
    logits_of(model, valid, flips=False)
    valid_s = time.perf_counter() - v0
    mean_epoch_s = sum(step_s[s] * len(train) + valid_s for s in sides) / len(sides)
    epochs = max(len(sides), int((args.minutes * 60 - (time.perf_counter() - start)) // mean_epoch_s))
    t = replace(t, epochs=epochs)
    side_of = [sides[min(e * len(sides) // epochs, len(sides) - 1)] for e in range(epochs)]

    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, len(train))
    emas = [AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d), use_buffers=True) for d in decays]
    history = []
    for epoch in range(epochs):
        train.set_epoch(epoch + 1)
        train.set_side(side_of[epoch])
        model.train()
        e0 = time.perf_counter()
        for x, y in train:
            step(model, optimizer, x, y, t.label_smoothing)
            scheduler.step()
            for ema in emas:
                ema.update_parameters(model)
        logits, y = logits_of(model, valid, flips=False)  # one view per epoch, as `cnnlab train`
        valid_loss = float(F.cross_entropy(logits, y))
        history.append({"epoch": epoch + 1, "side": side_of[epoch], "valid_loss": round(valid_loss, 4),
                        "seconds": round(time.perf_counter() - e0, 1)})  # fmt: skip
        print(json.dumps(history[-1]), flush=True)
    train_s = time.perf_counter() - start
    test_last = accuracy(model, test)
    ema_test = {str(d): accuracy(ema.module, test) for d, ema in zip(decays, emas, strict=True)}
    ema_valid = {str(d): accuracy(ema.module, valid) for d, ema in zip(decays, emas, strict=True)}
    print(json.dumps({
        "bench": "fashion_levers", "cpu": platform.processor() or platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
        "seed": args.seed, "sides": sides, "epochs": epochs,
        "step_ms": {s: round(1000 * v, 1) for s, v in step_s.items()},
        "train_minutes": round(train_s / 60, 2), "valid_last": accuracy(model, valid), "test_last": test_last,
        "ema_valid": ema_valid, "ema_test": ema_test,
        "ema_gain_points": {d: round(100 * (a - test_last), 2) for d, a in ema_test.items()},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
