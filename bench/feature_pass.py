"""The frozen-feature pass at 224 px: cnnlab's backend (measured per machine) vs eager PyTorch, one run.

Both compute the same thing: EfficientNet-Lite0's pooled features at every level (what the transfer candidates,
the model search and the audit cache) of the same real photos (the photo folders in ../shared/data when present,
else random images), batch 64. 1,024 photos: a pass eager PyTorch finishes within 8 s stays on PyTorch (building
the ONNX graph would not pay), so a smaller job measures PyTorch against itself.

- baseline: eager PyTorch, channels_last, fp32 (the pass before this benchmark's change);
- cnnlab: `predict.features.backbone_features` from an empty cache: choosing the backend (building and timing
  the ONNX Runtime graph) is counted in `cnnlab_first_s`; `cnnlab_images_per_s` is the pass itself afterwards.

Prints one JSON line with both rates, their ratio and the largest difference relative to the features' range.
Usage: .venv/bin/python bench/feature_pass.py [--images 1024] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from cnnlab.data.batches import Normalization
from cnnlab.data.images import decode_files
from cnnlab.machine import CpuInfo
from cnnlab.models.pretrained import PretrainedClassifier, backbone_preprocessing, load_pretrained
from cnnlab.predict import features
from cnnlab.predict.graph import relative_difference

BACKBONE = "efficientnet_lite0"


def photos(folder: Path, n: int, size: int, crop_pct: float) -> tuple[torch.Tensor, str]:
    if folder.is_dir():
        array, _ = decode_files(
            sorted(p for p in folder.iterdir() if p.is_dir()), size=size, channels=3, crop_pct=crop_pct, limit=n
        )
        return torch.from_numpy(array), str(folder)
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    ), "random"


def timed(fn) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data")
    args = parser.parse_args()
    p = backbone_preprocessing(BACKBONE)
    model = PretrainedClassifier(2, 3, p.input_size, backbone=BACKBONE, strategy="feature-extract")
    load_pretrained(model)
    model.eval()
    norm = Normalization(p.mean, p.std)
    images, source = photos(args.data, args.images, p.input_size, p.crop_pct)
    eager, eager_s = timed(lambda: features._compute(features.AllLevels(model), images, norm, None, None, 64, "cpu"))
    with tempfile.TemporaryDirectory() as cache:
        lines: list[str] = []
        first, first_s = timed(
            lambda: features.backbone_features(model, images, norm, cache_dir=Path(cache), log=lines.append)
        )
        forward = features.feature_backend(model, images, norm, n_images=len(images), digest=model.backbone_digest(),
                                           cache_dir=Path(cache))  # fmt: skip
        again, pass_s = timed(lambda: features._compute(forward, images, norm, None, None, 64, "cpu"))
    cpu = CpuInfo.here()
    print(json.dumps({
        "bench": "feature_pass", "model": BACKBONE, "image_size": p.input_size, "images": len(images), "data": source,
        "threads": torch.get_num_threads(), "cpu": cpu.name, "cpu_capability": cpu.capability, "bf16": cpu.bf16,
        "backend": [line for line in lines if line.startswith("features on")],
        "eager_images_per_s": round(len(images) / eager_s, 1), "cnnlab_images_per_s": round(len(images) / pass_s, 1),
        "ratio": round(eager_s / pass_s, 2), "cnnlab_first_s": round(first_s, 1), "eager_s": round(eager_s, 1),
        "max_relative_diff": float(relative_difference(eager.numpy(), first[0].numpy())),
        "same_as_cached": bool(torch.equal(first[0], again)),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
