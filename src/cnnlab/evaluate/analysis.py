"""From a table of predictions (labels + class probabilities) to every number eval.json reports.

Works on a run's predictions.csv as well as on predictions made elsewhere, so `cnnlab evaluate`,
`cnnlab report` and `cnnlab score` agree by construction.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.evaluate import metrics as M
from cnnlab.evaluate.thresholds import ThresholdRule, binary_metrics, choose_threshold


@dataclass
class PredictionTable:
    ids: list[str]
    labels: np.ndarray  # int64 [N], index into class_names
    probs: np.ndarray  # float [N, K]
    class_names: list[str]

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def class_index(self, name: str) -> int:
        if name not in self.class_names:
            raise CnnlabError(f"unknown positive class '{name}' (classes: {', '.join(self.class_names)})")
        return self.class_names.index(name)


def read_predictions(path: Path) -> PredictionTable:
    """Read a cnnlab predictions CSV (id, label, predicted, p_<class>...), checking every value."""
    rows, header = read_csv_rows(path)
    classes = [h[2:] for h in header if h.startswith("p_")]
    for needed in ("id", "label"):
        if needed not in header:
            raise CnnlabError(f"{path}: no '{needed}' column (expected id,label,predicted,p_<class>...)")
    if len(classes) < 2:
        raise CnnlabError(f"{path}: needs at least two p_<class> probability columns")
    probs = np.array([[parse_probability(r[f"p_{c}"], path, f"p_{c}", i) for c in classes] for i, r in enumerate(rows)])
    labels = []
    for i, r in enumerate(rows):
        if r["label"] not in classes:
            raise CnnlabError(f"{path} row {i + 2}: label '{r['label']}' has no p_{r['label']} column")
        labels.append(classes.index(r["label"]))
    return PredictionTable([r["id"] for r in rows], np.array(labels, dtype=np.int64), probs, classes)


def read_csv_rows(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a byte-order mark (Excel's CSV) is dropped
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        rows = list(reader)
    if not header or not rows:
        raise CnnlabError(f"{path} is empty (expected a header row and one row per case)")
    return rows, header


def parse_probability(text: str, path: Path, column: str, row: int) -> float:
    """A score in [0, 1]; anything else names the file, column and (1-based, header = 1) row."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise CnnlabError(f"{path} column '{column}' row {row + 2}: {text!r} is not a probability in [0, 1]")
    return value


def multiclass_summary(table: PredictionTable) -> dict[str, Any]:
    """Balanced accuracy, top-k, per-class precision/recall/specificity/F1/AUC, confusion matrix, ECE."""
    k = len(table.class_names)
    y, pred = table.labels, table.predicted
    reports = M.per_class_report(y, pred, n_classes=k)
    aucs = M.ovr_auc(y, table.probs, n_classes=k)
    per_class = {}
    for name, rep, auc, idx in zip(table.class_names, reports, aucs, range(k), strict=True):
        correct = int(((y == idx) & (pred == idx)).sum())
        per_class[name] = {
            "correct": correct, "total": rep.support,
            "accuracy": correct / rep.support if rep.support else float("nan"),
            "precision": rep.precision, "recall": rep.recall, "sensitivity": rep.recall,
            "specificity": rep.specificity, "f1": rep.f1, "support": rep.support, "auc": auc,
        }  # fmt: skip
    top_k = {f"top_{j}": M.top_k_accuracy(y, table.probs, k=j) for j in (2, 3, 5) if j < k}
    return {
        "accuracy": M.accuracy(y, pred),
        "balanced_accuracy": M.balanced_accuracy(y, pred, n_classes=k),
        **top_k,
        "macro_auc": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan"),
        "ece": M.expected_calibration_error(y, table.probs),
        "per_class": per_class,
        "confusion_matrix": M.confusion_matrix(y, pred, n_classes=k).tolist(),
    }


def binary_summary(
    test: PredictionTable,
    valid: PredictionTable | None,
    positive: str,
    rule: ThresholdRule,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """`positive` vs the rest: AUC with a bootstrap 95% CI (resampling `groups` of test images, when given), and
    test metrics at a threshold chosen by `rule` on the validation predictions (frozen before the test set is
    looked at)."""
    k = test.class_index(positive)
    y_test, s_test = test.labels == k, test.probs[:, k]
    source = "validation"
    if valid is None:
        if rule.kind != "fixed":
            raise CnnlabError("choosing a threshold needs validation predictions (valid_predictions.csv)")
        source = "given"
        threshold = choose_threshold(y_test, s_test, rule)
        at_valid = None
    else:
        y_valid, s_valid = valid.labels == valid.class_index(positive), valid.probs[:, k]
        threshold = choose_threshold(y_valid, s_valid, rule)
        at_valid = binary_metrics(y_valid, s_valid, threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.DegenerateMetricWarning)
        block = binary_block(y_test, s_test, threshold, positive=positive, n_boot=n_boot, seed=seed, groups=groups)
        _, _, ap = M.precision_recall(y_test, s_test)
    return {
        **block, "average_precision": ap, "threshold_rule": str(rule), "threshold_chosen_on": source,
        "valid_at_threshold": at_valid,
    }  # fmt: skip


def binary_block(
    y, score, threshold: float, *, positive: str, n_boot: int = 1000, seed: int = 0, groups=None
) -> dict[str, Any]:
    """The binary result every route reports (evaluate, report, score): the positive class, AUC with its
    bootstrap 95% CI (by `groups` when given), the threshold and the confusion counts and rates at it."""
    return {
        "positive": positive, "auc": M.roc_auc(y, score),
        "auc_ci95": list(M.bootstrap_auc_ci(y, score, n_boot=n_boot, seed=seed, groups=groups)),
        "auc_ci_resamples": "cases" if groups is None else "groups", "threshold": threshold,
        **binary_metrics(y, score, threshold),
    }  # fmt: skip
