"""`cnnlab export RUN --int8`: an exported fp32 file as ONNX Runtime's static int8 file, and the check it must pass.

Three steps, each measured on EfficientNet-Lite0 (bench/RESULTS.md): quantise (QDQ, per-channel int8 weights,
uint8 activations calibrated on validation images) leaving the output layer and the first sixth of the
convolutions in fp32 (`float_nodes`); refit that fp32 output layer so its logits match the fp32 file's on the
run's training images (`match_output_layer`: the int8 features are a little off everywhere, and a linear layer
can take most of that back); then judge the file by how often it gives the fp32 file's label on every held-out
image (`agreement`, with an interval) and by its test accuracy (`checked`), or write nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from cnnlab.errors import CnnlabError
from cnnlab.predict.graph import add_metadata

INT8_MAX_DROP = 0.01  # int8 may lose at most 1 point of test accuracy against the fp32 file
INT8_MIN_AGREEMENT = 0.99  # and must give the fp32 file's label on this share of the valid + test images
INT8_FLOAT_CONVS = 1 / 6  # the first sixth of the convolutions stays fp32 (with the classifier): measured below
REFIT_IMAGES = 2000  # training images the output layer is refitted on (at most)
REFIT_RIDGES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # the refit's pull towards the trained weights, chosen by
REFIT_FOLDS = 4  # cross-validation over the training images it is fitted on


def seeded_sample(split: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """At most `n` of a split's image indices, drawn with `seed`, sorted: the int8 ranges are calibrated on
    validation images and the output layer refitted on training images, never on a test image."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.asarray(split), size=min(n, len(split)), replace=False))


def quantized(fp32: Path, calibration: np.ndarray, metadata: dict[str, str]) -> Path:
    """ONNX Runtime's static int8 quantisation of `fp32` (QDQ, per-channel int8 weights, uint8 activations: the
    fast u8s8 kernels; signed activations ran 3x slower here) after its recommended pre-processing, written beside
    it as int8.onnx. The output layer and the first sixth of the convolutions (`float_nodes`) stay fp32: on
    EfficientNet-Lite0 that took label agreement with the fp32 file from 94.9% to 98.3% (Fashion-MNIST, 1,000 per
    class, 4,000 images judged) and from 95.5% to 97.9% (fine-tuned on blood cells) at the same 0.28x size, still
    1.4x faster at batch 64 (bench/RESULTS.md)."""
    import onnx  # optional heavy import: onnx (exported files only)
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )  # optional heavy import: onnxruntime (optional backend / int8)
    from onnxruntime.quantization.shape_inference import quant_pre_process  # the same package

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": calibration[i : i + 64]} for i in range(0, len(calibration), 64)])

        def get_next(self):
            return next(self.batches, None)

    prepared, out = fp32.with_name("prepared.onnx"), fp32.with_name("int8.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # symbolic: transformers; it fails on
    # the flip-averaged graph
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # its progress notes are noise here
    try:
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        nodes_to_exclude=float_nodes(onnx.load(str(prepared))))  # fmt: skip
    finally:
        root.level = level
    prepared.unlink()
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    add_metadata(proto, {**metadata, "quantization": "int8 static (ONNX Runtime), per-channel weights; the "
                         "output layer and the first sixth of the convolutions in fp32"})  # fmt: skip
    onnx.save(proto, str(out))
    return out


def float_nodes(proto) -> list[str]:
    """The nodes int8 leaves in fp32: the output layer (the last Gemm / MatMul's weights; a hidden dense layer, most
    of a small CNN's size, is quantised) and the first INT8_FLOAT_CONVS of the convolution weights in graph order
    (the stem and the first blocks, whose errors every later layer amplifies; Lite0: 8 of 49). By weight, so a
    graph that holds a network more than once keeps each copy alike."""
    nodes = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1]
    convs = list(dict.fromkeys(n.input[1] for n in nodes if n.op_type == "Conv"))
    dense = [n.input[1] for n in nodes if n.op_type != "Conv"]
    kept = set(convs[: int(len(convs) * INT8_FLOAT_CONVS)]) | set(dense[-1:])
    return [n.name for n in nodes if n.input[1] in kept]


def _output_layer(proto):
    """The output layer's node (the last Gemm / MatMul with weights) when it is a Gemm of the usual form
    (y = x W^T + b) used once, else None: a layer of another form is left as it was trained."""
    dense = [n for n in proto.graph.node if n.op_type in ("Gemm", "MatMul") and len(n.input) > 1]
    if not dense or sum(n.input[1] == dense[-1].input[1] for n in dense) > 1:
        return None
    last = dense[-1]
    return last if last.op_type == "Gemm" and len(last.input) == 3 and _gemm_form(last) == (0, 1, 1.0, 1.0) else None


def _gemm_form(node) -> tuple:
    """A Gemm's (transA, transB, alpha, beta), with ONNX's defaults for those not given."""
    given = {a.name: (a.i if a.name.startswith("trans") else a.f) for a in node.attribute}
    return tuple(given.get(k, d) for k, d in (("transA", 0), ("transB", 0), ("alpha", 1.0), ("beta", 1.0)))


def _with_features(proto, head):
    """An ONNX Runtime session of `proto` that also returns the output layer's input (the features)."""
    import onnx  # optional heavy import: onnx (exported files only)
    import onnxruntime as ort  # optional heavy import: onnxruntime (optional backend / int8)

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    copy.graph.output.append(onnx.helper.make_tensor_value_info(head.input[0], onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])


def match_output_layer(int8: Path, fp32: Path, images: Iterable[np.ndarray]) -> dict:
    """Refit the int8 file's output layer (kept in fp32) so that its logits match the fp32 file's on `images`
    (batches of normalised training images): least squares of the fp32 file's logits (of each image and, where
    test-time flips are inside the graph, its mirror: the layer sees both) on the int8 file's features, pulled
    towards the trained weights by a ridge chosen by cross-validation over those images (`_ridge`). The int8
    features differ from the fp32 ones a little everywhere; a linear layer can undo the part of that which is
    systematic. On Lite0 this took label agreement on Fashion-MNIST at 1,000 per class from 98.3% to 99.1%
    (bench/RESULTS.md). Fitted on training images only, so the agreement judged on valid + test images stays held
    out. Returns what was done."""
    import onnx  # optional heavy import: onnx (exported files only)
    from onnx import numpy_helper

    proto8, proto32 = onnx.load(str(int8)), onnx.load(str(fp32))
    head8, head32 = _output_layer(proto8), _output_layer(proto32)
    if head8 is None or head32 is None:
        return {"refit": False, "why": "the output layer is not a plain Gemm used once"}
    weights = {i.name: i for i in proto8.graph.initializer}
    w_init, b_init = weights[head8.input[1]], weights[head8.input[2]]
    theta0 = np.concatenate([numpy_helper.to_array(w_init).T, numpy_helper.to_array(b_init)[None]]).astype(np.float64)
    folds, images_seen = _fold_sums(_with_features(proto8, head8), _with_features(proto32, head32), images, theta0)
    if images_seen < 2 * REFIT_FOLDS:
        return {"refit": False, "why": f"{images_seen} training images"}
    ridge, held_out = _ridge(folds)
    gram, moment = sum(f.gram for f in folds), sum(f.moment for f in folds)
    theta = theta0 + np.linalg.solve(gram + ridge * np.trace(gram) / len(gram) * np.eye(len(gram)), moment)
    w_init.CopyFrom(numpy_helper.from_array(theta[:-1].T.astype(np.float32).copy(), w_init.name))
    b_init.CopyFrom(numpy_helper.from_array(theta[-1].astype(np.float32), b_init.name))
    for prop in proto8.metadata_props:
        if prop.key == "quantization":
            prop.value += f"; the output layer refitted to the fp32 file's logits on {images_seen} training images"
    onnx.save(proto8, str(int8))
    before = np.sqrt(sum(f.squares for f in folds) / sum(f.rows * len(theta0.T) for f in folds))
    return {"refit": True, "images": images_seen, "ridge": ridge, "logit_rms_before": float(before),
            "logit_rms_held_out": held_out}  # fmt: skip


@dataclass
class _Fold:
    """One cross-validation fold's sums for the output layer's least squares (design A, residual R)."""

    gram: np.ndarray  # A^T A
    moment: np.ndarray  # A^T R
    squares: float  # sum of R^2
    rows: int

    def add(self, design: np.ndarray, residual: np.ndarray) -> None:
        self.gram += design.T @ design
        self.moment += design.T @ residual
        self.squares += float((residual**2).sum())
        self.rows += len(design)


def _fold_sums(s8, s32, images: Iterable[np.ndarray], theta0: np.ndarray) -> tuple[list[_Fold], int]:
    """Each fold's sums over `images` (row i of a batch in fold i mod REFIT_FOLDS; an image and its mirror, rows i
    and n + i, share a fold when the batch is a multiple of REFIT_FOLDS), and the number of images: the int8
    features with a constant as design, the fp32 logits less the trained layer's output on them as residual."""
    n, c = theta0.shape
    folds = [_Fold(np.zeros((n, n)), np.zeros((n, c)), 0.0, 0) for _ in range(REFIT_FOLDS)]
    name8, name32 = s8.get_inputs()[0].name, s32.get_inputs()[0].name
    seen = 0
    for x in images:
        (a8,), (a32,) = s8.run(None, {name8: x})[1:], s32.run(None, {name32: x})[1:]
        design = np.concatenate([a8, np.ones((len(a8), 1))], 1)
        residual = (np.concatenate([a32, np.ones((len(a32), 1))], 1) - design) @ theta0
        for k, fold in enumerate(folds):
            fold.add(design[k::REFIT_FOLDS], residual[k::REFIT_FOLDS])
        seen += len(x)
    return folds, seen


def _ridge(folds: list[_Fold]) -> tuple[float, float]:
    """(ridge, held-out logit rms): the REFIT_RIDGES value whose fit on the other folds leaves the least squared
    residual on each held-out fold, summed; relative to the features' scale (the trace of A^T A over its size)."""
    scores = {}
    for ridge in REFIT_RIDGES:
        total = 0.0
        for k, held in enumerate(folds):
            gram = sum(f.gram for i, f in enumerate(folds) if i != k)
            moment = sum(f.moment for i, f in enumerate(folds) if i != k)
            delta = np.linalg.solve(gram + ridge * np.trace(gram) / len(gram) * np.eye(len(gram)), moment)
            total += held.squares - 2 * float((delta * held.moment).sum()) + float((delta * (held.gram @ delta)).sum())
        scores[ridge] = total
    best = min(scores, key=scores.get)
    return best, float(np.sqrt(max(scores[best], 0.0) / sum(f.rows * f.moment.shape[1] for f in folds)))


def agreement(fp32: np.ndarray, int8: np.ndarray) -> dict[str, Any]:
    """How often the int8 file gives the fp32 file's label (with a 95% Wilson interval) and the largest
    probability difference, on the same images: a held-out split of 40 images cannot tell 1 point from noise."""
    same = int((fp32.argmax(1) == int8.argmax(1)).sum())
    low, high = binomtest(same, len(fp32)).proportion_ci(confidence_level=0.95, method="wilson")
    p32, p8 = (np.exp(z - z.max(1, keepdims=True)) for z in (fp32, int8))
    gap = np.abs(p32 / p32.sum(1, keepdims=True) - p8 / p8.sum(1, keepdims=True)).max()
    return {"label_agreement": same / len(fp32), "agreement_interval": [float(low), float(high)],
            "agreement_images": len(fp32), "max_probability_diff": float(gap)}  # fmt: skip


def checked(
    logits: np.ndarray, labels: np.ndarray, fp32_accuracy: float, fp32_bytes: int, path: Path, *, agreed: dict
) -> dict:  # fmt: skip
    """The int8 file's test accuracy and its label agreement with the fp32 file on valid + test; it must keep
    both (INT8_MAX_DROP, INT8_MIN_AGREEMENT) or nothing is written."""
    accuracy = float((logits.argmax(1) == labels).mean())
    result = {"accuracy_int8": accuracy, "accuracy_delta": accuracy - fp32_accuracy,
              "size_ratio": path.stat().st_size / fp32_bytes, **agreed}  # fmt: skip
    if fp32_accuracy - accuracy > INT8_MAX_DROP or agreed["label_agreement"] < INT8_MIN_AGREEMENT:
        raise CnnlabError(
            f"int8 parity check failed: test accuracy {100 * accuracy:.2f}% vs {100 * fp32_accuracy:.2f}% in fp32 "
            f"(allowed drop {100 * INT8_MAX_DROP:g} points), the fp32 label kept on "
            f"{100 * agreed['label_agreement']:.2f}% of {agreed['agreement_images']} valid + test images "
            f"(needed {100 * INT8_MIN_AGREEMENT:g}%); nothing written: use the fp32 file (cnnlab export RUN), which "
            "predicts as the run"
        )
    return result
