"""`cnnlab export RUN`: a run's best checkpoint as an ONNX file that is enough on its own to predict.

The file takes normalised float images [N, C, H, W] (any N) and returns logits; its metadata holds the
preprocessing (size, channels, mean/std, crop fraction and the resize rule), the class names and the
cnnlab/torch versions. Batch norm is folded into the convolutions before export where the model can be
traced by torch.fx (the course CNNs); otherwise ONNX Runtime folds it when it loads the file.

Every export is checked before it counts: on test images of the run, ONNX Runtime's logits against
PyTorch's (max absolute difference relative to the logit range <= PARITY_TOLERANCE), argmax agreement and
both test accuracies, printed and written to RUN/export.json. A failed check is an error that leaves no
file behind, and an existing file is only replaced with --force.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import CnnlabError

FORMATS = ("onnx",)
PARITY_TOLERANCE = 1e-4  # max |logit difference| / logit range for an fp32 export
OPSET = 18  # the torch.export-based exporter's baseline
RESIZE_RULE = (
    "shorter side to round(image_size / crop_pct) (bicubic, antialiased), centre crop to image_size; "
    "grey (L) or RGB as `channels` (data.images.decode_array)"
)


def export_run(
    run_dir: Path, *, fmt: str = "onnx", output: Path | None = None, force: bool = False,
    parity_images: int = 1000, log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Export `run_dir`'s best.pt to `output` (default RUN/model.onnx) after a parity check; returns the
    check's figures (also in RUN/export.json)."""
    from cnnlab.data.lazy import select
    from cnnlab.data.sources import load_source
    from cnnlab.data.splits import load_splits
    from cnnlab.engine.checkpoint import check_compatible, load_checkpoint
    from cnnlab.evaluate.predict import model_from_checkpoint, predict_logits
    from cnnlab.runfolder import open_run

    if fmt not in FORMATS:
        raise CnnlabError(f"unknown export format '{fmt}' (choose from: {', '.join(FORMATS)})")
    run_dir = Path(run_dir)
    config = open_run(run_dir)
    output = Path(output) if output is not None else run_dir / "model.onnx"
    if output.exists() and not force:
        raise CnnlabError(f"{output} already exists (choose another --output or pass --force)")
    ckpt_path = run_dir / "best.pt"
    if not ckpt_path.is_file():
        raise CnnlabError(f"{ckpt_path} is missing (train the run first, or resume it: cnnlab train --resume)")
    ckpt = load_checkpoint(ckpt_path)
    source = load_source(config.data, log=lambda _: None)
    check_compatible(ckpt, model_name=config.model.name, class_names=source.class_names, path=ckpt_path)
    model = model_from_checkpoint(ckpt, ckpt_path)
    prep = ckpt.preprocessing
    norm = prep.normalization()
    test_idx = load_splits(run_dir / "splits.json")["test"][:parity_images]
    images, labels = select(source.images, test_idx), source.labels[torch.as_tensor(test_idx)]
    expected = predict_logits(model, images, norm)
    x = torch.cat([norm.apply(images[i : i + 1000]).float() for i in range(0, len(test_idx), 1000)])
    metadata = _metadata(ckpt)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        _write_onnx(_folded(model), x[:2], Path(tmp), metadata)
        got = onnx_logits(Path(tmp), x.numpy())
        result = _parity(expected.numpy(), got, labels.numpy())
        result.update(format=fmt, file=str(output), size_bytes=Path(tmp).stat().st_size, opset=OPSET)
        if not result["passed"]:
            raise CnnlabError(
                f"export parity check failed: max logit difference {result['max_abs_logit_diff']:.3g} is "
                f"{result['relative_diff']:.3g} of the logit range (limit {PARITY_TOLERANCE}); nothing written"
            )
        os.chmod(tmp, 0o644)  # a file to hand on (mkstemp creates it private)
        Path(tmp).replace(output)
    finally:
        Path(tmp).unlink(missing_ok=True)
    from cnnlab.files import write_text_atomic

    write_text_atomic(run_dir / "export.json", json.dumps(result, indent=2))
    log(
        f"exported {output} ({result['size_bytes'] / 1e6:.2f} MB, ONNX opset {OPSET}); parity on {result['images']} "
        f"test images: max logit difference {result['max_abs_logit_diff']:.2g} ({result['relative_diff']:.2g} of "
        f"the range), same label {100 * result['same_argmax']:.2f}%, accuracy {100 * result['accuracy_torch']:.2f}% "
        f"PyTorch / {100 * result['accuracy_onnx']:.2f}% ONNX"
    )
    return result


def _folded(model: torch.nn.Module) -> torch.nn.Module:
    """The model with batch norm folded into the preceding convolutions (torch.fx), or as it is."""
    import copy

    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).float().eval())
    except Exception:  # not fx-traceable (data-dependent control flow): ONNX Runtime folds at load
        return model.float().eval()


def _metadata(ckpt) -> dict[str, str]:
    import cnnlab

    p = ckpt.preprocessing
    return {
        "cnnlab_version": cnnlab.__version__, "torch_version": torch.__version__, "model": ckpt.model_name,
        "class_names": json.dumps(list(ckpt.class_names)), "image_size": str(p.image_size),
        "channels": str(p.channels), "mean": json.dumps(list(map(float, p.mean))),
        "std": json.dumps(list(map(float, p.std))), "crop_pct": str(p.crop_pct), "resize": RESIZE_RULE,
        "input": "normalised float32 images [N, channels, image_size, image_size]: (pixel / 255 - mean) / std",
        "output": "logits [N, classes], in class_names order",
    }  # fmt: skip


def _write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    import onnx

    # torch.export-based exporter (the default since PyTorch 2.9; the TorchScript one is deprecated)
    torch.onnx.export(
        model, (example,), str(path), input_names=["image"], output_names=["logits"], opset_version=OPSET,
        dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False, verbose=False,
    )  # fmt: skip
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def onnx_logits(path: Path, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Logits of an exported file for normalised images `x`, through ONNX Runtime."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
        raise CnnlabError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0][:160]}") from exc
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def _parity(expected: np.ndarray, got: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    diff = float(np.abs(expected - got).max())
    spread = float(expected.max() - expected.min()) or 1.0
    return {
        "images": int(len(labels)), "max_abs_logit_diff": diff, "relative_diff": diff / spread,
        "same_argmax": float((expected.argmax(1) == got.argmax(1)).mean()),
        "accuracy_torch": float((expected.argmax(1) == labels).mean()),
        "accuracy_onnx": float((got.argmax(1) == labels).mean()), "passed": diff / spread <= PARITY_TOLERANCE,
    }  # fmt: skip
