"""`score`: metrics for predictions made elsewhere, in the generic or the ISIC-2017 layout.

Generic: predictions `id,<score columns>` (one column: binary score; several, or `p_<class>`: class
probabilities), truth `id,label` (or a `label` column in the predictions). ISIC-2017 / dermatologist-ai:
predictions `Id,task_1,task_2` (probabilities of melanoma and of seborrheic keratosis); truth as
`Id,task_1,task_2` 0/1, as ISIC's `image_id,melanoma,seborrheic_keratosis`, or derived from paths like
`data/test/melanoma/ISIC_0012258.jpg`. Category 1 = melanoma AUC, category 2 = seborrheic keratosis
AUC, category 3 = their mean.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.evaluate.analysis import (
    PredictionTable,
    binary_block,
    multiclass_summary,
    parse_probability,
    read_csv_rows,
)
from cnnlab.files import write_json_atomic
from cnnlab.runs import refuse_existing

ISIC_FOLDERS = {"melanoma": (1, 0), "seborrheic_keratosis": (0, 1), "nevus": (0, 0)}
NOT_SCORES = {"id", "label", "predicted"}


def check_threshold(threshold: float | None) -> float:
    if threshold is None:
        return 0.5
    if not 0.0 <= threshold <= 1.0:
        raise CnnlabError(f"--threshold must be in [0, 1], got {threshold}")
    return float(threshold)


def score_file(
    predictions: Path, *, truth: Path | None = None, positive: str | None = None, threshold: float | None = None
) -> dict[str, Any]:
    """Score `predictions` against `truth` (see the module doc for layouts)."""
    t = check_threshold(threshold)
    rows, header = read_csv_rows(predictions)
    id_col = _id_column(header, predictions)
    if {"task_1", "task_2"} <= set(header):
        return _score_isic(predictions, rows, id_col, truth, t)
    return _score_generic(predictions, rows, header, id_col, truth, positive, t)


def _id_column(header: list[str], path: Path) -> str:
    for name in ("id", "Id", "ID", "image_id", "path"):
        if name in header:
            return name
    raise CnnlabError(f"{path}: no id column (expected one named id, Id, image_id or path)")


def _aligned(pred_path: Path, pred_ids: list[str], truth_path: Path, truth_ids: list[str]) -> np.ndarray:
    """Row order of the truth file that matches the predictions' ids (exact, else by file stem)."""
    if len(pred_ids) != len(truth_ids):
        raise CnnlabError(
            f"{pred_path} has {len(pred_ids)} rows but {truth_path} has {len(truth_ids)} (same cases in both)"
        )
    for ids, path in ((pred_ids, pred_path), (truth_ids, truth_path)):
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise CnnlabError(f"{path}: id '{dup}' appears more than once")
    index = {i: k for k, i in enumerate(truth_ids)}
    if not all(i in index for i in pred_ids):
        index = {Path(i).stem: k for k, i in enumerate(truth_ids)}
        pred_ids = [Path(i).stem for i in pred_ids]
    missing = [i for i in pred_ids if i not in index]
    if missing:
        raise CnnlabError(
            f"id '{missing[0]}' of {pred_path} is not in {truth_path} (both files must list the same ids)"
        )
    return np.array([index[i] for i in pred_ids])


def _score_isic(pred_path: Path, rows, id_col: str, truth: Path | None, t: float) -> dict[str, Any]:
    ids = [r[id_col] for r in rows]
    scores = np.array(
        [[parse_probability(r[c], pred_path, c, i) for c in ("task_1", "task_2")] for i, r in enumerate(rows)]
    )
    y = _isic_truth(pred_path, ids, truth)
    out: dict[str, Any] = {"format": "isic2017", "n": len(ids), "threshold": t}
    for k, (task, name) in enumerate((("task_1", "melanoma"), ("task_2", "seborrheic_keratosis"))):
        out[f"category_{k + 1}"] = {"task": task, **binary_block(y[:, k], scores[:, k], t, positive=name)}
    out["category_3_mean_auc"] = (out["category_1"]["auc"] + out["category_2"]["auc"]) / 2
    return out


def _isic_truth(pred_path: Path, ids: list[str], truth: Path | None) -> np.ndarray:
    if truth is None:
        labels = []
        for i in ids:
            folder = Path(i).parent.name
            if folder not in ISIC_FOLDERS:
                raise CnnlabError(
                    f"cannot derive the truth of '{i}' from its folder (expected one of {', '.join(ISIC_FOLDERS)}; "
                    "or pass --truth)"
                )
            labels.append(ISIC_FOLDERS[folder])
        return np.array(labels)
    rows, header = read_csv_rows(truth)
    cols = ("task_1", "task_2") if {"task_1", "task_2"} <= set(header) else ("melanoma", "seborrheic_keratosis")
    if not set(cols) <= set(header):
        raise CnnlabError(f"{truth}: expected columns Id,task_1,task_2 or image_id,melanoma,seborrheic_keratosis")
    order = _aligned(pred_path, ids, truth, [r[_id_column(header, truth)] for r in rows])
    values = np.array([[_binary_label(r[c], truth, c, i) for c in cols] for i, r in enumerate(rows)])
    return values[order]


def _binary_label(text: str, path: Path, column: str, row: int) -> int:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value not in (0.0, 1.0):
        raise CnnlabError(f"{path} column '{column}' row {row + 2}: {text!r} is not a 0/1 label")
    return int(value)


def _score_generic(pred_path, rows, header, id_col, truth, positive, t) -> dict[str, Any]:
    score_cols = [h for h in header if h.startswith("p_")] or [h for h in header if h not in NOT_SCORES | {id_col}]
    if not score_cols:
        raise CnnlabError(f"{pred_path}: no score columns (expected id,score or id,p_<class>...)")
    ids = [r[id_col] for r in rows]
    scores = np.array([[parse_probability(r[c], pred_path, c, i) for c in score_cols] for i, r in enumerate(rows)])
    labels = _generic_labels(pred_path, rows, header, ids, truth)
    if len(score_cols) == 1:
        return _score_binary(labels, scores[:, 0], positive, t, truth or pred_path)
    _check_sums(scores, pred_path)
    classes = [c[2:] if c.startswith("p_") else c for c in score_cols]
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise CnnlabError(f"label '{unknown[0]}' has no score column (columns: {', '.join(score_cols)})")
    table = PredictionTable(ids, np.array([classes.index(lbl) for lbl in labels]), scores, classes)
    out: dict[str, Any] = {"format": "multiclass", "n": len(ids), **multiclass_summary(table)}
    if positive is not None:
        k = table.class_index(positive)
        y, s = table.labels == k, scores[:, k]
        out["binary"] = binary_block(y, s, t, positive=positive)
    return out


SUM_TOLERANCE = 0.01  # rounded probabilities (6 decimals, or 2) still count as summing to 1


def _check_sums(scores: np.ndarray, path: Path) -> None:
    """One probability per class must sum to 1 per row; per-class sigmoid scores are not a prediction of one
    class, and accuracy or a confusion matrix from them would mislead."""
    off = np.flatnonzero(np.abs(scores.sum(1) - 1) > SUM_TOLERANCE)
    if len(off):
        row = int(off[0])
        raise CnnlabError(
            f"{path} row {row + 2}: the class probabilities sum to {scores[row].sum():.4g}, not 1 "
            f"({len(off)} such rows; write softmax probabilities, one column per class)"
        )


def _generic_labels(pred_path, rows, header, ids, truth) -> list[str]:
    if truth is None:
        if "label" not in header:
            raise CnnlabError(f"{pred_path} has no label column; pass --truth FILE with columns id,label")
        return [r["label"] for r in rows]
    t_rows, t_header = read_csv_rows(truth)
    if "label" not in t_header:
        raise CnnlabError(f"{truth}: no 'label' column (expected id,label)")
    order = _aligned(pred_path, ids, truth, [r[_id_column(t_header, truth)] for r in t_rows])
    return [t_rows[k]["label"] for k in order]


def _score_binary(labels: list[str], score: np.ndarray, positive: str | None, t: float, where: Path) -> dict:
    values = sorted(set(labels))
    if positive is None:
        if not set(values) <= {"0", "1"}:
            raise CnnlabError(
                f"{where}: labels {values[:5]} are not 0/1; pass --positive CLASS to name the positive one"
            )
        positive = "1"
    elif positive not in values:
        raise CnnlabError(f"unknown positive class '{positive}' (labels in {where}: {', '.join(values[:10])})")
    y = np.array([lbl == positive for lbl in labels])
    return {"format": "binary", "n": len(labels), **binary_block(y, score, t, positive=positive)}


def format_score(r: dict[str, Any]) -> str:
    """The result of `score_file` as the lines `cnnlab score` prints."""

    def binary_line(label: str, b: dict) -> str:
        lo, hi = b["auc_ci95"]
        at = f"at threshold {b.get('threshold', r.get('threshold')):.2f}"
        rates = f"sensitivity {b['sensitivity']:.4f}, specificity {b['specificity']:.4f}"
        values = f"{rates}, PPV {b['ppv']:.4f}, NPV {b['npv']:.4f}"
        return f"{label}: AUC {b['auc']:.4f} (95% CI {lo:.4f}-{hi:.4f}); {at}: {values}"

    if r["format"] == "isic2017":
        return "\n".join([
            f"{r['n']} cases (ISIC-2017 layout)",
            binary_line("Category 1 (melanoma, task_1)", r["category_1"]),
            binary_line("Category 2 (seborrheic keratosis, task_2)", r["category_2"]),
            f"Category 3 (mean AUC): {r['category_3_mean_auc']:.4f}",
        ])  # fmt: skip
    if r["format"] == "binary":
        return f"{r['n']} cases\n" + binary_line(f"{r['positive']} vs rest", r)
    lines = [f"{r['n']} cases: accuracy {r['accuracy']:.4f}, balanced accuracy {r['balanced_accuracy']:.4f}"]
    if "binary" in r:
        lines.append(binary_line(f"{r['binary']['positive']} vs rest", r["binary"]))
    return "\n".join(lines)


def score_command(
    predictions: Path, *, truth: Path | None = None, positive: str | None = None, threshold: float | None = None,
    output: Path | None = None, dry_run: bool = False, log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """`cnnlab score`: score a predictions file, print it, and write the result as JSON to `output`."""
    if output is not None:
        refuse_existing(output, force=False)
    result = score_file(predictions, truth=truth, positive=positive, threshold=threshold)
    log(format_score(result))
    if output is not None and not dry_run:
        write_json_atomic(output, result)
        log(f"wrote {output}")
    return result
