"""Transfer learning speed: the course's feature-extraction recipe vs cnnlab's `feature-extract`, same data and epochs.

(a) course: torchvision ImageFolder + PIL transforms (RandomResizedCrop 224 + flip for training, Resize 256 +
    CenterCrop 224 for validation), DataLoader batch 20, the frozen backbone run forward on every image in every
    epoch, SGD lr 0.001 on the new head, validation loss each epoch, best-by-validation weights kept.
(b) cnnlab: `pipeline.train` with strategy feature-extract from a cold cache (decode + one backbone pass + head
    epochs + test evaluation, all timed), then (c) the same run again with the caches warm.

Prints one JSON line. Usage: .venv/bin/python bench/transfer.py [--data PATH] [--epochs 10] [--per-class 60]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cnnlab.data.samples import write_sample_folder
from cnnlab.models.pretrained import PretrainedClassifier, backbone_preprocessing, load_pretrained
from cnnlab.pipeline import train


def course_recipe(data: Path, backbone: str, epochs: int) -> tuple[float, float]:
    """Seconds for `epochs` epochs of the course recipe, and the test accuracy of its best-by-valid-loss head."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    p = backbone_preprocessing(backbone)
    norm = transforms.Normalize(p.mean, p.std)
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(p.input_size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]
    )
    eval_tf = transforms.Compose(
        [
            transforms.Resize(round(p.input_size / p.crop_pct)),
            transforms.CenterCrop(p.input_size),
            transforms.ToTensor(),
            norm,
        ]
    )
    loaders = {
        split: DataLoader(
            datasets.ImageFolder(str(data / split), train_tf if split == "train" else eval_tf),
            batch_size=20, shuffle=split == "train", num_workers=0,
        )
        for split in ("train", "valid", "test")
    }  # fmt: skip
    torch.manual_seed(0)
    model = PretrainedClassifier(len(loaders["train"].dataset.classes), 3, p.input_size, backbone=backbone)
    load_pretrained(model)
    for param in model.backbone.parameters():
        param.requires_grad = False
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.001)
    best, best_loss = None, float("inf")
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loaders["train"]:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            loss = sum(float(F.cross_entropy(model(x), y, reduction="sum")) for x, y in loaders["valid"])
        if loss < best_loss:
            best, best_loss = copy.deepcopy(model.state_dict()), loss
    seconds = time.perf_counter() - start
    model.load_state_dict(best)
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loaders["test"])
    return seconds, correct / len(loaders["test"].dataset)


def cnnlab_run(data: Path, backbone: str, epochs: int, root: Path, runs: Path, name: str) -> tuple[float, float]:
    config = RunConfig(
        data=DataConfig(source=f"folder:{data}", root=str(root), augment="none"),
        model=ModelConfig(name=backbone, strategy="feature-extract"),
        train=TrainConfig(epochs=epochs, batch_size=32),
    )
    start = time.perf_counter()
    result = train(config, runs_dir=runs, name=name, report=False, log=lambda _: None)
    return time.perf_counter() - start, result.evaluation["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="image folder with train/valid/test (default: Fashion-MNIST PNGs)")
    parser.add_argument("--per-class", type=int, default=60, help="images per class of the default folder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data or tmp / "fashion"
        if args.data is None:
            write_sample_folder("fashion", data, per_class=args.per_class)
        n_images = sum(1 for p in data.rglob("*.png"))
        cold_s, cnnlab_acc = cnnlab_run(data, args.backbone, args.epochs, tmp / "root", tmp / "runs", "cold")
        warm_s, _ = cnnlab_run(data, args.backbone, args.epochs, tmp / "root", tmp / "runs", "warm")
        course_s, course_acc = course_recipe(data, args.backbone, args.epochs)
    print(json.dumps({
        "bench": "transfer", "backbone": args.backbone, "images": n_images, "epochs": args.epochs,
        "course_seconds": round(course_s, 1), "cnnlab_cold_seconds": round(cold_s, 1),
        "cnnlab_warm_seconds": round(warm_s, 1), "speedup_cold": round(course_s / cold_s, 1),
        "speedup_warm": round(course_s / warm_s, 1), "course_test_acc": round(course_acc, 4),
        "cnnlab_test_acc": round(cnnlab_acc, 4), "threads": torch.get_num_threads(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
