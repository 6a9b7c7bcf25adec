"""Predicting from a file made by `cnnlab export`, with ONNX Runtime alone: torch is never imported here.

The file's metadata says how to prepare an image (size, channels, mean/std, crop fraction), so the same
decoding as training (`data.images.decode_array`) and a numpy normalisation give the file its input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.data.images import decoded_chunks
from cnnlab.errors import CnnlabError
from cnnlab.extras import require

NEEDED = ("class_names", "image_size", "channels", "mean", "std", "crop_pct")


@dataclass
class FilePrediction:
    path: str
    probabilities: np.ndarray  # one per class, in the file's class order


def predict_onnx(model_path: Path, inputs: list[Path], *, limit: int | None = None):
    """(class names, [FilePrediction]) for image files, from an exported ONNX file."""
    session = open_session(model_path)
    meta = session.get_modelmeta().custom_metadata_map
    missing = [k for k in NEEDED if k not in meta]
    if missing:
        raise CnnlabError(
            f"{model_path} lacks cnnlab's preprocessing metadata ({', '.join(missing)}); export it with cnnlab export"
        )
    size, channels = int(meta["image_size"]), int(meta["channels"])
    mean = np.asarray(json.loads(meta["mean"]), np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(json.loads(meta["std"]), np.float32).reshape(1, -1, 1, 1)
    found = []
    for arrays, kept in decoded_chunks(inputs, size=size, channels=channels, crop_pct=float(meta["crop_pct"]),
                                       limit=limit):  # fmt: skip
        x = np.ascontiguousarray(((arrays.astype(np.float32) / 255 - mean) / std).astype(np.float32))
        logits = onnx_logits(session, x, batch=256)
        z = np.exp(logits - logits.max(1, keepdims=True))
        found += [FilePrediction(str(p), pr) for p, pr in zip(kept, z / z.sum(1, keepdims=True), strict=True)]
    return json.loads(meta["class_names"]), found


def open_session(path: Path, *, threads: int | None = None):
    """An ONNX Runtime CPU session for `path` (on `threads` threads; default ONNX Runtime's: one per core); a
    missing or damaged file is one clear error."""
    require("onnxruntime", purpose="running an ONNX file")
    import onnxruntime as ort  # optional heavy import: onnxruntime (optional backend / int8)

    if not Path(path).is_file():
        raise CnnlabError(f"model file not found: {path} (make one with: cnnlab export RUN)")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
        raise CnnlabError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0][:160]}") from exc


def onnx_logits(model, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Logits for normalised images `x` from an exported file (a path or an open session), batch by batch."""
    session = model if hasattr(model, "run") else open_session(model)
    spec = session.get_inputs()[0]
    name, wanted = spec.name, list(spec.shape[1:])
    fits = x.ndim == len(spec.shape) and all(
        not isinstance(w, int) or w == got for w, got in zip(wanted, x.shape[1:], strict=True)
    )
    if not fits:
        raise CnnlabError(
            f"the model takes images shaped [N, {', '.join(map(str, wanted))}], got {list(x.shape)} "
            "(a file whose metadata does not match its input; re-export it with cnnlab export)"
        )
    return np.concatenate([session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])
