"""`evaluate_run`: the best checkpoint on the test split -> predictions.csv, eval.json, a per-class table."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.data.batches import Normalization
from cnnlab.data.sources import Source, load_source
from cnnlab.data.splits import load_splits
from cnnlab.engine.checkpoint import check_compatible, load_checkpoint
from cnnlab.evaluate.predict import model_from_checkpoint, predict_logits
from cnnlab.runfolder import open_run


def per_class_accuracy(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict[str, dict]:
    """{class: {"correct", "total", "accuracy"}}; accuracy is NaN for a class with no test images."""
    table = {}
    for k, name in enumerate(class_names):
        mask = labels == k
        total, correct = int(mask.sum()), int((predicted[mask] == k).sum())
        table[name] = {"correct": correct, "total": total, "accuracy": correct / total if total else float("nan")}
    return table


def format_accuracy_table(result: dict[str, Any]) -> str:
    """The course's printout: `Test Accuracy of Sneaker: 97% (970/1000)` per class, then the overall line."""
    lines = [f"Test Loss: {result['test_loss']:.6f}", ""]
    for name, row in result["per_class"].items():
        if row["total"]:
            lines.append(
                f"Test Accuracy of {name:>5}: {int(100 * row['accuracy']):2d}% ({row['correct']}/{row['total']})"
            )
        else:
            lines.append(f"Test Accuracy of {name:>5}: N/A (no test images)")
    n_correct = sum(r["correct"] for r in result["per_class"].values())
    lines += ["", f"Test Accuracy (Overall): {100 * result['accuracy']:.2f}% ({n_correct}/{result['n_test']})"]
    return "\n".join(lines)


def evaluate_run(
    run_dir: Path,
    *,
    checkpoint: Path | None = None,
    source: Source | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate `run_dir`'s best.pt (or `checkpoint`) on its test split; write the result files.

    Writes predictions.csv (test), valid_predictions.csv (for threshold choice later) and eval.json,
    each atomically. With `dry_run`, one batch is scored and nothing is written.
    """
    run_dir = Path(run_dir)
    config = open_run(run_dir)
    splits = load_splits(run_dir / "splits.json")
    ckpt_path = Path(checkpoint) if checkpoint else run_dir / "best.pt"
    ckpt = load_checkpoint(ckpt_path)
    source = source or load_source(config.data)
    check_compatible(ckpt, model_name=config.model.name, class_names=source.class_names, path=ckpt_path)
    model = model_from_checkpoint(ckpt, ckpt_path)
    prep = ckpt["preprocessing"]
    norm = Normalization(tuple(prep["mean"]), tuple(prep["std"]))
    max_batches = 1 if dry_run else None
    outputs = {}
    for split in ("test", "valid"):
        idx = splits[split]
        logits = predict_logits(model, source.images[idx], norm, max_batches=max_batches)
        outputs[split] = (idx[: len(logits)], logits)
    idx, logits = outputs["test"]
    labels = source.labels[idx].numpy()
    predicted = logits.argmax(1).numpy()
    result = {
        "n_test": int(len(idx)),
        "test_loss": float(F.cross_entropy(logits, torch.as_tensor(labels))),
        "accuracy": float((predicted == labels).mean()),
        "per_class": per_class_accuracy(labels, predicted, source.class_names),
        "checkpoint": str(ckpt_path),
        "epoch": int(ckpt.get("epoch", 0)),
    }
    if dry_run:
        log(f"dry run ok: scored {len(idx)} test images (nothing written)")
        return result
    for split, name in (("test", "predictions.csv"), ("valid", "valid_predictions.csv")):
        write_predictions(run_dir / name, source, *outputs[split])
    _write_atomic(run_dir / "eval.json", json.dumps(result, indent=2))
    log(format_accuracy_table(result))
    return result


def write_predictions(path: Path, source: Source, indices: np.ndarray, logits: torch.Tensor) -> None:
    """CSV: id (dataset index or file path), label, predicted, then one probability column per class."""
    probs = torch.softmax(logits, dim=1).numpy()
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "label", "predicted", *[f"p_{c}" for c in source.class_names]])
        for i, p in zip(indices, probs, strict=True):
            label = source.class_names[int(source.labels[i])]
            writer.writerow([source.ids[i], label, source.class_names[int(p.argmax())], *[f"{v:.6f}" for v in p]])
    tmp.replace(path)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
