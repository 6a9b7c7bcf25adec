"""Time to test accuracy on Fashion-MNIST (60k/10k): the course's recipe against cnnlab's default, one run.

(a) course: `simple_cnn`, DataLoader over PIL images with ToTensor + Normalize, 20% validation through a
    SubsetRandomSampler, batch 20, SGD lr 0.01 without momentum, log_softmax fed to CrossEntropyLoss,
    validation loss every epoch; runs for --course-minutes.
(b) cnnlab default: `simple_cnn_bn`, in-memory uint8 batches with light augmentation, AdamW one-cycle
    peak 3e-3, batch 128, epochs planned by cnnlab's --budget-minutes (default 5), validation every epoch
    (the engine's recipe, built from its parts), in fp32 and, where this CPU runs bf16 natively, in bf16
    autocast too; `precision_chosen` is what `--precision auto` picks here (engine/precision.py).
(c) with --large-minutes M, the larger recipe (recipes/fashion-large.yaml): `resnet_small`, SGD-nesterov
    one-cycle peak 0.1, label smoothing 0.1, batch 256, epochs planned by --budget-minutes M, in the chosen
    precision.
Test accuracy is measured after every epoch outside the clock. Prints one JSON line with the CPU, the
seconds each needed to reach 88.9/91/92/93/93.5/95% and the speed-up at 88.9% (the course's best in 12
minutes).

(d) with --short-minutes M (default 0.5), the default recipe in the chosen precision with a budget aimed at the
    course's 88.9%; the speed-up is taken against cnnlab's fastest run to 88.9%.

Usage: .venv/bin/python bench/time_to_accuracy.py [--course-minutes 8] [--budget-minutes 5] [--large-minutes 30]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from cnnlab.config import DataConfig, TrainConfig
from cnnlab.data.augment import policy_for
from cnnlab.data.batches import InMemoryBatches, Normalization
from cnnlab.data.sources import load_source
from cnnlab.data.splits import make_splits
from cnnlab.machine import CpuInfo
from cnnlab.models import create_model
from cnnlab.training.budget import plan_budget
from cnnlab.training.fit import build_optimizer, build_scheduler, evaluate_loss, make_fabric, train_one_epoch
from cnnlab.training.precision import BF16, FP32, auto_precision

TARGETS = (0.889, 0.91, 0.92, 0.93, 0.935, 0.95)


@torch.inference_mode()
def test_accuracy(model, images: torch.Tensor, labels: torch.Tensor, norm: Normalization, mirror=False) -> float:
    """Accuracy on the test images; with `mirror`, of the mean of each image's and its mirror's softmax (the
    test-time flips cnnlab's evaluation uses when they lower the validation loss)."""
    model.eval()
    correct, device = 0, next(model.parameters()).device
    for i in range(0, len(images), 1000):
        x = norm.apply(images[i : i + 1000].to(device)).contiguous(memory_format=torch.channels_last)
        p = model(x).float().softmax(1)
        if mirror:
            p = p + model(x.flip(-1)).float().softmax(1)
        correct += int((p.argmax(1).cpu() == labels[i : i + 1000]).sum())
    return correct / len(images)


def course(source, minutes: float) -> list[tuple[float, float]]:
    """[(cumulative train+valid seconds, test accuracy)] per epoch of the course's recipe."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

    class Pil(Dataset):
        def __init__(self, idx):
            self.idx = idx

        def __len__(self):
            return len(self.idx)

        def __getitem__(self, i):
            j = self.idx[i]
            return tf(Image.fromarray(source.images[j, 0].numpy())), int(source.labels[j])

    pool = Pil(source.partitions["train"])
    order = np.random.default_rng(0).permutation(len(pool))
    split = int(0.2 * len(pool))
    train = DataLoader(pool, batch_size=20, sampler=SubsetRandomSampler(order[split:]))
    valid = DataLoader(pool, batch_size=20, sampler=SubsetRandomSampler(order[:split]))
    test_idx = source.partitions["test"]
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    history, clock = [], 0.0
    while clock < minutes * 60:
        start = time.perf_counter()
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            F.cross_entropy(F.log_softmax(model(x), dim=1), y).backward()  # the course's double softmax
            optimizer.step()
        model.eval()
        with torch.no_grad():
            sum(float(F.cross_entropy(F.log_softmax(model(x), dim=1), y)) for x, y in valid)
        clock += time.perf_counter() - start
        norm = Normalization((0.5,), (0.5,))
        history.append((clock, test_accuracy(model, source.images[test_idx], source.labels[test_idx], norm)))
    return history


def cnnlab_recipe(source, model_name: str, t: TrainConfig) -> list[tuple[float, float, float]]:
    """[(cumulative train+valid seconds, test accuracy, with test-time flips)] per epoch of `model_name`
    trained with `t` (on the GPU where there is one: Fabric's device)."""
    splits = make_splits(source.labels.numpy(), source.partitions, valid_fraction=0.2, test_fraction=0.2, seed=0)
    norm = Normalization.from_images(source.images[splits["train"]])
    policy = policy_for("light", flip_invariant=True)
    train = InMemoryBatches(
        source.images, source.labels, splits["train"], batch_size=t.batch_size, norm=norm, shuffle=True,
        policy=policy, drop_last=True,
    )  # fmt: skip
    valid = InMemoryBatches(source.images, source.labels, splits["valid"], batch_size=1000, norm=norm)
    fabric = make_fabric(t)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10).to(memory_format=torch.channels_last)
    clock = 0.0
    if t.budget_minutes:  # cnnlab's own planner; its probe counts against the budget
        start = time.perf_counter()
        t = plan_budget(t, fabric, model, train, valid, log=lambda _: None).train
        clock = time.perf_counter() - start
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, len(train))
    loss_fn = model.compute_loss  # the plain module's, before Fabric wraps it
    model, optimizer = fabric.setup(model, optimizer)
    test_idx = splits["test"]
    history = []
    for epoch in range(1, t.epochs + 1):
        start = time.perf_counter()
        train.set_epoch(epoch)
        train_one_epoch(fabric, model, train, optimizer, scheduler, t.label_smoothing, loss_fn=loss_fn)
        with fabric.autocast():
            evaluate_loss(model, valid)
        clock += time.perf_counter() - start
        x, y = source.images[test_idx], source.labels[test_idx]
        history.append((clock, test_accuracy(model, x, y, norm), test_accuracy(model, x, y, norm, mirror=True)))
    return history


def large_recipe(minutes: float) -> TrainConfig:
    """The larger recipe as recipes/fashion-large.yaml writes it, with the budget given."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "fashion-large.yaml").read_text())
    return replace(TrainConfig(**raw["train"]), budget_minutes=minutes)


def summary(history: list[tuple]) -> dict:
    out = {"seconds_to": time_to(history), "best": max(h[1] for h in history), "epochs": len(history),
           "seconds": round(history[-1][0], 1), "per_epoch": [round(h[1], 4) for h in history]}  # fmt: skip
    if len(history[0]) > 2:  # with test-time flips
        mirrored = [(h[0], h[2]) for h in history]
        out.update(seconds_to_with_tta=time_to(mirrored), per_epoch_with_tta=[round(h[2], 4) for h in history])
    return out


def time_to(history: list[tuple]) -> dict[str, float | None]:
    return {f"{100 * t:g}%": next((round(h[0], 1) for h in history if h[1] >= t), None) for t in TARGETS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--course-minutes", type=float, default=8.0)
    parser.add_argument("--budget-minutes", type=float, default=5.0, help="the default recipe's budget")
    parser.add_argument("--large-minutes", type=float, default=0.0, help="0 skips the larger recipe")
    parser.add_argument("--short-minutes", type=float, default=0.5, help="a short budget aimed at 88.9%%; 0 skips")
    args = parser.parse_args()
    source = load_source(DataConfig(source="fashion-mnist"))
    cpu = CpuInfo.here()
    chosen = auto_precision("simple_cnn_bn", batch=128)
    runs = {}
    for precision in (FP32, BF16) if cpu.bf16 else (FP32,):
        t = TrainConfig(batch_size=128, budget_minutes=args.budget_minutes, precision=precision)
        runs[f"cnnlab_{precision}"] = summary(cnnlab_recipe(source, "simple_cnn_bn", t))
    if args.short_minutes:
        t = TrainConfig(batch_size=128, budget_minutes=args.short_minutes, precision=chosen)
        runs["cnnlab_short"] = summary(cnnlab_recipe(source, "simple_cnn_bn", t))
    if args.large_minutes:
        large = replace(large_recipe(args.large_minutes), precision=auto_precision("resnet_small", batch=256))
        runs[f"large_{large.precision}"] = summary(cnnlab_recipe(source, "resnet_small", large))
    runs["course"] = summary(course(source, args.course_minutes))
    times = [r["seconds_to"]["88.9%"] for k, r in runs.items() if k.startswith("cnnlab") and r["seconds_to"]["88.9%"]]
    a, b = runs["course"]["seconds_to"]["88.9%"], min(times, default=None)
    print(json.dumps({
        "bench": "time_to_accuracy", "cpu": cpu.name, "capability": cpu.capability, "native_bf16": cpu.bf16,
        "threads": torch.get_num_threads(), "precision_chosen": chosen, **runs,
        "speedup_at_88.9%": round(a / b, 1) if a and b else None,
        "course_not_reached_88.9%_by": None if a else runs["course"]["seconds"],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
