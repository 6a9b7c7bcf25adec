"""`cnnlab export RUN`: a run's best checkpoint as an ONNX file that is enough on its own to predict (or, with
`--format pt2`, as torch.export's ExportedProgram for PyTorch's own deployment tools: ExecuTorch, AOTInductor;
PyTorch recommends it over TorchScript, which it no longer develops).

The file takes normalised float images [N, C, H, W] (any N) and returns logits; its metadata holds the
preprocessing (size, channels, mean/std, crop fraction and the resize rule), the class names and the
cnnlab/torch versions. Batch norm is folded into the convolutions before export where the model can be
traced by torch.fx (the course CNNs); otherwise ONNX Runtime folds it when it loads the file.

Every export is checked before it counts: on test images of the run, ONNX Runtime's logits (for pt2, the
saved program's) against PyTorch's (max absolute difference relative to the logit range <=
PARITY_TOLERANCE), argmax agreement and both test accuracies, printed and written to RUN/export.json. A
failed check is an error that leaves no file behind, and an existing file is only replaced with --force.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data.lazy import select
from cnnlab.data.splits import read_run_splits
from cnnlab.errors import CnnlabError
from cnnlab.export.int8 import REFIT_IMAGES, agreement, checked, match_output_layer, quantized, seeded_sample
from cnnlab.extras import ONNX_PACKAGES, require
from cnnlab.files import staging_dir, write_text_atomic
from cnnlab.predict.graph import (
    OPSET,
    PARITY_TOLERANCE,
    FlipAveraged,
    folded,
    onnx_metadata,
    relative_difference,
    write_onnx,
)
from cnnlab.predict.infer import mean_of_views, open_trained_run, predict_logits
from cnnlab.predict.onnx import onnx_logits
from cnnlab.runs import RunFile, recorded_tta, refuse_existing

FORMATS = ("onnx", "pt2")  # pt2: torch.export's ExportedProgram, which PyTorch recommends over TorchScript
ACCURACY_TOLERANCE = 0.001  # the exported file's test accuracy against eval.json's (same images, same flips)


def export_run(
    run_dir: Path, *, fmt: str = "onnx", output: Path | None = None, force: bool = False,
    parity_images: int | None = None, int8: bool = False, calibration: int = 500, tta: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Export `run_dir`'s best.pt to `output` (default RUN/model.onnx, RUN/model.int8.onnx with `int8`) after a
    parity check; returns the check's figures (also in RUN/export.json, under the file's name). The graph
    predicts as the run was evaluated: with its test-time flips inside when the run uses them (`tta` None; False
    exports the plain model, True adds them). On the whole test split (`parity_images` None) the file's accuracy
    must equal eval.json's within ACCURACY_TOLERANCE. With `int8`, the fp32 file is quantised (ONNX Runtime,
    static, per-channel weights) with activation ranges calibrated on `calibration` seeded validation images,
    and must keep its test accuracy within INT8_MAX_DROP of the fp32 file's."""
    if fmt not in FORMATS:
        raise CnnlabError(f"unknown export format '{fmt}' (choose from: {', '.join(FORMATS)})")
    if int8 and fmt != "onnx":
        raise CnnlabError("--int8 quantises with ONNX Runtime: use it with --format onnx")
    if fmt == "onnx":
        require(*ONNX_PACKAGES, purpose="cnnlab export")
    run_dir = Path(run_dir)
    default_name = "model.pt2" if fmt == "pt2" else ("model.int8.onnx" if int8 else "model.onnx")
    output = Path(output) if output is not None else run_dir / default_name
    refuse_existing(output, force=force)
    run = open_trained_run(run_dir)
    config, ckpt, source, model = run.config, run.checkpoint, run.source, run.model
    norm = ckpt.preprocessing.normalization()
    splits = read_run_splits(run_dir / RunFile.SPLITS, source, needed=("valid", "test"), log=log).splits
    run_tta = bool(recorded_tta(run_dir))
    tta = run_tta if tta is None else tta
    test_idx = splits["test"][:parity_images]
    x = _normalised(source.images, test_idx, norm)
    labels = source.labels[torch.as_tensor(test_idx)].numpy()
    expected = predict_logits(model, torch.from_numpy(x), _IDENTITY)
    if tta:  # the evaluation's own averaging, so the parity check also checks the graph's
        expected = mean_of_views(expected, predict_logits(model, torch.from_numpy(x), _IDENTITY, mirror=True))
    expected = expected.numpy()
    graph = FlipAveraged(folded(model)).eval() if tta else folded(model)
    metadata = onnx_metadata(ckpt, tta=tta)
    with staging_dir(output) as work:  # gone on any error; a full disk is one error line
        if fmt == "pt2":
            final = Path(work) / "model.pt2"
            got = _write_pt2(graph, torch.from_numpy(x[:2]), final, metadata, x)
        else:
            final = Path(work) / "fp32.onnx"
            write_onnx(graph, torch.from_numpy(x[:2]), final, metadata)
            got = onnx_logits(final, x)
        result = _parity(expected, got, labels)
        result.update(format=fmt, opset=OPSET if fmt == "onnx" else None, tta=tta)
        if not result["passed"]:
            raise CnnlabError(
                f"export parity check failed: max logit difference {result['max_abs_logit_diff']:.3g} is "
                f"{result['relative_diff']:.3g} of the logit range (limit {PARITY_TOLERANCE}); nothing written"
            )
        result.update(_against_evaluation(run_dir, result, whole=len(test_idx) == len(splits["test"]),
                                          same_tta=tta == run_tta))  # fmt: skip
        if int8:
            fp32, fp32_bytes = final, final.stat().st_size
            chosen = seeded_sample(splits["valid"], calibration, seed=config.train.seed)
            final = quantized(final, _normalised(source.images, chosen, norm), metadata)
            refit = seeded_sample(splits["train"], REFIT_IMAGES, seed=config.train.seed)
            matched = match_output_layer(final, fp32, _normalised_batches(source.images, refit, norm))
            judged = np.concatenate([_normalised(source.images, splits["valid"], norm), x])  # every held-out image
            result["int8"] = checked(
                onnx_logits(final, x), labels, result["accuracy_exported"], fp32_bytes, final,
                agreed=agreement(onnx_logits(fp32, judged), onnx_logits(final, judged)),
            )  # fmt: skip
            result["int8"].update(calibration_split="valid", calibration_indices=[int(i) for i in chosen],
                                  output_layer=matched)  # fmt: skip
        result.update(file=str(output), size_bytes=final.stat().st_size)
        os.chmod(final, 0o644)  # a file to hand on
        final.replace(output)
    exports = read_exports(run_dir / RunFile.EXPORT)
    exports[output.name] = result  # one entry per exported file
    write_text_atomic(run_dir / RunFile.EXPORT, json.dumps(exports, indent=2))
    log(_summary(result))
    return result


def _against_evaluation(run_dir: Path, result: dict[str, Any], *, whole: bool, same_tta: bool) -> dict[str, Any]:
    """The exported file's test accuracy beside eval.json's. Where both cover the same images the same way (the
    whole test split, the run's test-time flips), a gap above ACCURACY_TOLERANCE is an error: the file is not
    the model the run reported."""
    path = run_dir / RunFile.EVAL
    if not path.is_file():
        return {}
    evaluated = float(json.loads(path.read_text())["accuracy"])
    out = {"accuracy_evaluated": evaluated}
    if not whole or not same_tta:
        out["accuracy_compared"] = "no: " + ("a part of the test split" if not whole else "other test-time flips")
        return out
    if abs(result["accuracy_exported"] - evaluated) > ACCURACY_TOLERANCE:
        raise CnnlabError(
            f"the exported file scores {100 * result['accuracy_exported']:.2f}% on the test split, the run's "
            f"evaluation {100 * evaluated:.2f}% (eval.json; limit {100 * ACCURACY_TOLERANCE:g} point): it is not "
            "the evaluated model; nothing written (evaluate the run again: cnnlab evaluate RUN)"
        )
    out["accuracy_compared"] = "yes"
    return out


def read_exports(path: Path) -> dict[str, Any]:
    """RUN/export.json: one entry per exported file (empty when missing or unreadable)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) and all(isinstance(v, dict) for v in found.values()) else {}


class _Identity:
    """Images already normalised (float) go through `predict_logits` unchanged."""

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return images


_IDENTITY = _Identity()


def _normalised(images, idx, norm) -> np.ndarray:
    return np.concatenate(list(_normalised_batches(images, idx, norm, batch=1000)))


def _normalised_batches(images, idx, norm, batch: int = 128) -> Iterator[np.ndarray]:
    """The images at `idx`, normalised as the model takes them, a batch at a time (224-px images in bulk are
    gigabytes)."""
    for i in range(0, len(idx), batch):
        yield norm.apply(select(images, idx[i : i + batch])).float().numpy()


def _summary(r: dict[str, Any]) -> str:
    kind = f"ONNX opset {OPSET}" if r["format"] == "onnx" else "torch.export program"
    line = (
        f"exported {r['file']} ({r['size_bytes'] / 1e6:.2f} MB, {kind}); parity on {r['images']} test "
        f"images: max logit difference {r['max_abs_logit_diff']:.2g} ({r['relative_diff']:.2g} of the range), "
        f"same label {100 * r['same_argmax']:.2f}%, accuracy {100 * r['accuracy_torch']:.2f}% PyTorch / "
        f"{100 * r['accuracy_exported']:.2f}% exported"
        + (" (test-time flips inside the graph)" if r.get("tta") else "")
    )
    if r.get("accuracy_compared") == "yes":
        line += f"; equals the run's evaluation ({100 * r['accuracy_evaluated']:.2f}%, eval.json)"
    if "int8" in r:
        q = r["int8"]
        line += (
            f"; int8: {100 * q['accuracy_int8']:.2f}% ({100 * q['accuracy_delta']:+.2f} points), same label as fp32 on "
            f"{100 * q['label_agreement']:.2f}% of {q['agreement_images']} valid + test images (95% interval "
            f"{100 * q['agreement_interval'][0]:.1f}-{100 * q['agreement_interval'][1]:.1f}%), "
            f"{q['size_ratio']:.2f}x the fp32 size, calibrated on {len(q['calibration_indices'])} validation images"
        )
        fit = q.get("output_layer", {})
        line += f", output layer refitted on {fit['images']} training images" if fit.get("refit") else ""
    return line


def _write_pt2(
    model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str], x: np.ndarray
) -> np.ndarray:
    """Save torch.export's program of `model` (dynamic batch; metadata as the archive's extra file
    `cnnlab.json`) and return the logits of `x` from the saved file, for the parity check. Only this file,
    written here a moment ago, is loaded back: torch.export.load unpickles parts of an archive, so cnnlab
    never loads a .pt2 a user hands it (ONNX is the format it reads)."""
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    with warnings.catch_warnings():  # "No complete tensor found in the group": about GPU weights, not ours
        warnings.simplefilter("ignore", UserWarning)
        torch.export.save(program, str(path), extra_files={"cnnlab.json": json.dumps(metadata)})
        loaded = torch.export.load(str(path)).module()
    with torch.inference_mode():
        return torch.cat([loaded(torch.from_numpy(x[i : i + 1000])) for i in range(0, len(x), 1000)]).numpy()


def _parity(expected: np.ndarray, got: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    relative = relative_difference(expected, got)
    return {
        "images": int(len(labels)), "max_abs_logit_diff": float(np.abs(expected - got).max()),
        "relative_diff": relative,
        "same_argmax": float((expected.argmax(1) == got.argmax(1)).mean()),
        "accuracy_torch": float((expected.argmax(1) == labels).mean()),
        "accuracy_exported": float((got.argmax(1) == labels).mean()), "passed": relative <= PARITY_TOLERANCE,
    }  # fmt: skip
