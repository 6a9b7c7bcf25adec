"""Time to test accuracy on Fashion-MNIST (60k/10k): the course's recipe against cnnlab's default, one run.

(a) course: `simple_cnn`, DataLoader over PIL images with ToTensor + Normalize, 20% validation through a
    SubsetRandomSampler, batch 20, SGD lr 0.01 without momentum, log_softmax fed to CrossEntropyLoss,
    validation loss every epoch; runs for --course-minutes.
(b) cnnlab default: `simple_cnn_bn`, in-memory uint8 batches with light augmentation, AdamW one-cycle
    peak 3e-3, batch 128, --epochs epochs, validation every epoch (the engine's recipe, built from its parts).
Test accuracy is measured after every epoch outside the clock. Prints one JSON line with the seconds
each needed to reach 88.9/91/92/93/93.5% and the speed-up at 88.9% (the course's best in 12 minutes).

Usage: .venv/bin/python bench/time_to_accuracy.py [--course-minutes 8] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.config import DataConfig, TrainConfig
from cnnlab.data.augment import policy_for
from cnnlab.data.batches import InMemoryBatches, Normalization
from cnnlab.data.sources import load_source
from cnnlab.data.splits import make_splits
from cnnlab.engine.fit import build_optimizer, build_scheduler, evaluate_loss, make_fabric, train_one_epoch
from cnnlab.models import create_model

TARGETS = (0.889, 0.91, 0.92, 0.93, 0.935)


@torch.inference_mode()
def test_accuracy(model, images: torch.Tensor, labels: torch.Tensor, norm: Normalization) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), 1000):
        x = norm.apply(images[i : i + 1000]).contiguous(memory_format=torch.channels_last)
        correct += int((model(x).argmax(1) == labels[i : i + 1000]).sum())
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


def cnnlab_default(source, epochs: int) -> list[tuple[float, float]]:
    t = TrainConfig(epochs=epochs)
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
    model = create_model("simple_cnn_bn", num_classes=10).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, len(train))
    model, optimizer = fabric.setup(model, optimizer)
    test_idx = splits["test"]
    history, clock = [], 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train.set_epoch(epoch)
        train_one_epoch(fabric, model, train, optimizer, scheduler, 0.0)
        evaluate_loss(model, valid)
        clock += time.perf_counter() - start
        history.append((clock, test_accuracy(model, source.images[test_idx], source.labels[test_idx], norm)))
    return history


def time_to(history: list[tuple[float, float]]) -> dict[str, float | None]:
    return {f"{100 * t:g}%": next((round(s, 1) for s, a in history if a >= t), None) for t in TARGETS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--course-minutes", type=float, default=8.0)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    source = load_source(DataConfig(source="fashion-mnist"))
    ours = cnnlab_default(source, args.epochs)
    theirs = course(source, args.course_minutes)
    ours_t, theirs_t = time_to(ours), time_to(theirs)
    a, b = theirs_t["88.9%"], ours_t["88.9%"]
    print(json.dumps({
        "bench": "time_to_accuracy", "threads": torch.get_num_threads(),
        "course": {"seconds_to": theirs_t, "best": max(acc for _, acc in theirs), "epochs": len(theirs),
                   "seconds": round(theirs[-1][0], 1)},
        "cnnlab": {"seconds_to": ours_t, "best": max(acc for _, acc in ours), "epochs": len(ours),
                   "seconds": round(ours[-1][0], 1)},
        "speedup_at_88.9%": round(a / b, 1) if a and b else None,
        "per_epoch": {"course": [round(acc, 4) for _, acc in theirs], "cnnlab": [round(acc, 4) for _, acc in ours]},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
