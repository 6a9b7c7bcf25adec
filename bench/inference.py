"""Batch prediction speed of a trained model: eager PyTorch (fp32, channels_last, inference mode) against
ONNX Runtime when it is installed, on the same real test images, with the parity of their outputs.

Uses RUN/best.pt when --run is given (e.g. the `make demo` run), else a freshly initialised default model
(speed does not depend on the weights). Prints one JSON line. Usage:
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
from cnnlab.data.sources import load_source
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.evaluate.predict import model_from_checkpoint, predict_logits
from cnnlab.models import create_model


def load_model(run: Path | None, train_images: torch.Tensor):
    if run is None:
        torch.manual_seed(0)
        return create_model("simple_cnn_bn", num_classes=10).eval(), Normalization.from_images(train_images), "init"
    ckpt = load_checkpoint(run / "best.pt")
    return model_from_checkpoint(ckpt, run / "best.pt"), ckpt.preprocessing.normalization(), str(run)


def onnx_logits(model, x: np.ndarray, batch: int) -> tuple[np.ndarray, float] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model, (torch.from_numpy(x[:batch]),), str(path), input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False,
        )  # fmt: skip
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session.run(None, {"x": x[:batch]})  # warm-up
        start = time.perf_counter()
        out = np.concatenate([session.run(None, {"x": x[i : i + batch]})[0] for i in range(0, len(x), batch)])
        return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    source = load_source(DataConfig(source="fashion-mnist"))
    model, norm, which = load_model(args.run, source.images[source.partitions["train"]])
    images = source.images[source.partitions["test"][: args.images]]
    predict_logits(model, images[: args.batch], norm, batch_size=args.batch)  # warm-up
    start = time.perf_counter()
    eager = predict_logits(model, images, norm, batch_size=args.batch)
    eager_s = time.perf_counter() - start
    result = {"bench": "inference", "model": which, "images": len(images), "batch": args.batch,
              "threads": torch.get_num_threads(), "eager_images_per_s": round(len(images) / eager_s)}  # fmt: skip
    x = norm.apply(images).numpy()
    onnx = onnx_logits(model.float(), x, args.batch)
    if onnx is None:
        result["onnxruntime"] = "not installed (pip install onnxruntime onnx)"
    else:
        out, seconds = onnx
        result["onnx_images_per_s"] = round(len(images) / seconds)
        result["onnx_vs_eager"] = round(eager_s / seconds, 2)
        result["max_abs_logit_diff"] = float(np.abs(out - eager.numpy()).max())
        result["same_argmax"] = float((out.argmax(1) == eager.numpy().argmax(1)).mean())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
