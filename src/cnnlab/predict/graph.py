"""A model as a standalone graph: batch norm folded, written as ONNX with its preprocessing in the metadata,
and the parity measure every exported or backend graph is judged by. Shared by the prediction backends and
`cnnlab export`, below both."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch.fx.experimental.optimization import fuse

from cnnlab.version import __version__ as cnnlab_version

PARITY_TOLERANCE = 1e-4  # max |logit difference| / logit range for an fp32 export
OPSET = 18  # the torch.export-based exporter's baseline
RESIZE_RULE = (
    "shorter side to round(image_size / crop_pct) (bicubic, antialiased), centre crop to image_size; "
    "grey (L) or RGB as `channels` (data.images.decode_array)"
)


def folded(model: torch.nn.Module) -> torch.nn.Module:
    """The model with batch norm folded into the preceding convolutions (torch.fx), or as it is."""
    try:
        return fuse(copy.deepcopy(model).float().eval())
    except Exception:  # not fx-traceable (data-dependent control flow): ONNX Runtime folds at load
        return model.float().eval()


class FlipAveraged(torch.nn.Module):
    """`model` as a run with test-time flips predicts: the log of the mean softmax of each image and its mirror
    image (predict.infer.mean_of_views), in one graph, so an exported file gives what was evaluated."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one batch of the images and their mirrors: the graph holds the network once (run twice, ONNX Runtime's
        # int8 pre-processing folded batch norm into each copy apart and kept both, 0.52x instead of 0.28x)
        views = self.model(torch.cat([x, x.flip(-1)])).log_softmax(1).unflatten(0, (2, -1))
        return views.logsumexp(0) - math.log(2)


def onnx_metadata(ckpt, *, tta: bool = False) -> dict[str, str]:
    p = ckpt.preprocessing
    return {
        "cnnlab_version": cnnlab_version, "torch_version": torch.__version__, "model": ckpt.model_name,
        "class_names": json.dumps(list(ckpt.class_names)), "image_size": str(p.image_size),
        "channels": str(p.channels), "mean": json.dumps(list(map(float, p.mean))),
        "std": json.dumps(list(map(float, p.std))), "crop_pct": str(p.crop_pct), "resize": RESIZE_RULE,
        "input": "normalised float32 images [N, channels, image_size, image_size]: (pixel / 255 - mean) / std",
        "output": "logits [N, classes], in class_names order" + (
            "; test-time flips inside: the log of the mean probability of the image and its mirror image" if tta
            else ""),
        "test_time_flips": "averaged inside the graph" if tta else "none",
    }  # fmt: skip


def write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    import onnx  # optional heavy import: onnx (exported files only)

    # torch.export-based exporter (the default since PyTorch 2.9; the TorchScript one is deprecated)
    torch.onnx.export(
        model, (example,), str(path), input_names=["image"], output_names=["logits"], opset_version=OPSET,
        dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False, verbose=False,
    )  # fmt: skip
    proto = onnx.load(str(path))
    add_metadata(proto, metadata)
    onnx.save(proto, str(path))


def add_metadata(proto, metadata: dict[str, str]) -> None:
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def relative_difference(expected: np.ndarray, got: np.ndarray) -> float:
    """Max absolute logit difference relative to the expected logits' range: the parity measure."""
    return float(np.abs(expected - got).max()) / (float(expected.max() - expected.min()) or 1.0)
