"""`cnnlab predict`: the images a user names, through the right predictor, printed and optionally written.

A file made by `cnnlab export` is read by ONNX Runtime alone (this module and `predict.onnx` import no torch
on that path); a run folder or checkpoint goes through the run's own preprocessing and test-time flips; a
pretrained backbone name gives ImageNet classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.files import write_csv_atomic
from cnnlab.runs import RunFile, recorded_tta, refuse_existing


def predict_paths(
    paths: list[Path], *, model: str | None = None, weights: str | None = None, top_k: int = 3,
    output: Path | None = None, force: bool = False, dry_run: bool = False, backend: str = "auto",
    log: Callable[[str], None] = print, note: Callable[[str], None] = print,
) -> tuple[list[str], list]:  # fmt: skip
    """Predict, print the `top_k` classes per image through `log` (progress notes through `note`), write the
    CSV to `output` unless `dry_run` (one image only). Returns (class names, predictions)."""
    if output is not None and not dry_run:
        refuse_existing(output, force=force)
    limit = 1 if dry_run else None
    if model is None and len(paths) >= 2 and paths[0].suffix == ".onnx":
        from cnnlab.predict.onnx import predict_onnx

        classes, preds = predict_onnx(paths[0], paths[1:], limit=limit)
    else:
        from cnnlab.predict import infer  # deferred: torch loads here, never on the .onnx path above

        if model is not None:
            classes, preds = infer.predict_imagenet(model, paths, weights=weights, limit=limit)
        elif len(paths) < 2:
            raise CnnlabError("give a run folder and at least one image (or --model NAME for ImageNet classes)")
        else:
            run, images = paths[0], paths[1:]
            ckpt = run / RunFile.BEST if run.is_dir() else run
            classes, preds = infer.predict_images(
                ckpt, images, limit=limit, tta=run.is_dir() and bool(recorded_tta(run)), backend=backend, log=note
            )
    for line in format_predictions(classes, preds, top_k):
        log(line)
    if output is not None and not dry_run:
        write_predictions_csv(output, classes, preds)
        log(f"wrote {output}")
    return classes, preds


def format_predictions(classes: Sequence[str], preds, top_k: int) -> list[str]:
    """`path: class 97.1%, class 2.0%, ...`, the `top_k` classes per image."""
    lines = []
    for p in preds:
        order = p.probabilities.argsort()[::-1][:top_k]
        lines.append(f"{p.path}: " + ", ".join(f"{classes[k]} {100 * p.probabilities[k]:.1f}%" for k in order))
    return lines


def write_predictions_csv(path: Path, classes: Sequence[str], preds) -> None:
    """path, predicted, one probability column per class (the layout `cnnlab score` reads)."""
    rows = ([p.path, classes[int(p.probabilities.argmax())], *[f"{v:.6f}" for v in p.probabilities]] for p in preds)
    write_csv_atomic(path, ["path", "predicted", *[f"p_{c}" for c in classes]], rows)
