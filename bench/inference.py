"""Batch prediction speed of a trained model: cnnlab's default prediction path (the backend `auto` picks by
measurement, as `cnnlab evaluate` and `predict` use it) against ONNX Runtime called directly on the same
exported file, with eager PyTorch for reference, on the same real test images, with the parity of outputs.

Uses RUN/best.pt and RUN's test split when --run is given (e.g. the `make demo` run), else a freshly
initialised default model (speed does not depend on the weights). ONNX Runtime's own figure excludes
preprocessing (its input is normalised beforehand): the strict ceiling. Prints one JSON line. Usage:
.venv/bin/python bench/inference.py [--run runs/NAME] [--images 10000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import DataConfig
from cnnlab.data.batches import Normalization
from cnnlab.data.lazy import select
from cnnlab.data.sources import load_source
from cnnlab.data.splits import load_splits
from cnnlab.machine import CpuInfo
from cnnlab.models import create_model
from cnnlab.models.checkpoint import load_checkpoint
from cnnlab.predict.backends import choose_backend
from cnnlab.predict.infer import model_from_checkpoint, predict_logits
from cnnlab.predict.onnx import onnx_logits, open_session
from cnnlab.runs import open_run


def load_model(run: Path | None, tmp: Path):
    """(model, normalisation, checkpoint path, label, test images) for the run (its own test split), or a
    seeded fresh default model on Fashion-MNIST."""
    if run is None:
        source = load_source(DataConfig(source="fashion-mnist"))
        torch.manual_seed(0)
        model = create_model("simple_cnn_bn", num_classes=10).eval()
        torch.save(model.state_dict(), tmp / "init.pt")  # only hashed, to name the backend's ONNX file
        norm = Normalization.from_images(source.images[source.partitions["train"]])
        return model, norm, tmp / "init.pt", "init", source.images[source.partitions["test"]]
    ckpt = load_checkpoint(run / "best.pt")
    source = load_source(open_run(run).data)
    images = select(source.images, load_splits(run / "splits.json", source)["test"])
    model = model_from_checkpoint(ckpt, run / "best.pt")
    return model, ckpt.preprocessing.normalization(), run / "best.pt", str(run), images


def timed(fn, repeats: int = 3):
    """(output, best seconds of `repeats` runs after a warm-up): the least disturbed run on a shared machine."""
    out, best = fn(), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    model, norm, ckpt, which, images = load_model(args.run, tmp)
    images = images[: args.images]
    b = args.batch
    eager, eager_s = timed(lambda: predict_logits(model, images, norm, batch_size=b))
    backend = choose_backend(model, ckpt, norm.apply(images[:64]).float(), n_images=10**6, cache_dir=tmp,
                             log=lambda _: None)  # fmt: skip
    # n_images: the steady state of a large job (a small one would not build the ONNX file)
    default, default_s = timed(lambda: predict_logits(backend.forward, images, norm, batch_size=b))
    session = open_session(next(tmp.glob("predict-*.onnx")))
    x = norm.apply(images).float().numpy()
    direct, onnx_s = timed(lambda: onnx_logits(session, x, batch=b))
    cpu = CpuInfo.here()
    print(json.dumps({
        "bench": "inference", "model": which, "images": len(images), "batch": b, "threads": torch.get_num_threads(),
        "cpu": cpu.name, "capability": cpu.capability, "default_backend": backend.name, "why": backend.why,
        "eager_images_per_s": round(len(images) / eager_s), "default_images_per_s": round(len(images) / default_s),
        "onnx_images_per_s": round(len(images) / onnx_s), "default_vs_onnx": round(onnx_s / default_s, 2),
        "eager_vs_onnx": round(onnx_s / eager_s, 2),
        "max_abs_logit_diff": float(np.abs(default.numpy() - eager.numpy()).max()),
        "same_argmax": float((direct.argmax(1) == eager.numpy().argmax(1)).mean()),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
