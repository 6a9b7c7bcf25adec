"""Classification metrics as pure functions of labels and scores (scikit-learn's conventions).

Counting metrics (confusion matrix, sensitivity, specificity) are computed here from the confusion
matrix; curves and AUC come from scikit-learn, the reference. Degenerate input (a class absent, one
class only) warns and gives NaN instead of raising, so a report on a small test set still renders.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc


class DegenerateMetricWarning(UserWarning):
    """A metric is undefined for this input (e.g. AUC with a single class present)."""


def _nan(reason: str) -> float:
    warnings.warn(reason, DegenerateMetricWarning, stacklevel=3)
    return float("nan")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def confusion_matrix(y_true, y_pred, *, n_classes: int, normalize: str | None = None) -> np.ndarray:
    """Counts C[i, j] of true class i predicted as j; `normalize="true"` divides each row by its total.

    >>> confusion_matrix([0, 1, 1], [0, 0, 1], n_classes=2).tolist()
    [[1, 0], [1, 1]]
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    cm = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    if normalize is None:
        return cm
    if normalize != "true":
        raise ValueError(f"normalize must be None or 'true', got {normalize!r}")
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, cm / np.maximum(rows, 1), np.nan)


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else _nan("accuracy of an empty set")


def balanced_accuracy(y_true, y_pred, *, n_classes: int) -> float:
    """Mean recall over the classes present in `y_true` (scikit-learn's definition)."""
    cm = confusion_matrix(y_true, y_pred, n_classes=n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return _nan("balanced accuracy of an empty set")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def top_k_accuracy(y_true, scores, *, k: int) -> float:
    """Share of samples whose true class is among the `k` highest scores."""
    scores = np.asarray(scores)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(y_true)[:, None]).any(axis=1).mean())


@dataclass
class ClassReport:
    precision: float  # = PPV
    recall: float  # = sensitivity
    specificity: float
    f1: float
    support: int


def per_class_report(y_true, y_pred, *, n_classes: int) -> list[ClassReport]:
    """One-vs-rest precision, recall (sensitivity), specificity, F1 and support for every class."""
    cm = confusion_matrix(y_true, y_pred, n_classes=n_classes)
    total = cm.sum()
    out = []
    for k in range(n_classes):
        tp = cm[k, k]
        fn = cm[k].sum() - tp
        fp = cm[:, k].sum() - tp
        tn = total - tp - fn - fp
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        out.append(ClassReport(precision, recall, _ratio(tn, tn + fp), f1, int(tp + fn)))
    return out


def roc_auc(y_true_binary, score) -> float:
    """Area under the ROC curve; NaN with a warning when only one class is present."""
    y = np.asarray(y_true_binary).astype(bool)
    if y.all() or not y.any():
        return _nan("ROC AUC is undefined with only one class present")
    return float(roc_auc_score(y, np.asarray(score, dtype=np.float64)))


def roc_curve(y_true_binary, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) from scikit-learn, all points kept (thresholds decreasing)."""
    return sk_roc(np.asarray(y_true_binary).astype(bool), np.asarray(score, dtype=np.float64), drop_intermediate=False)


def precision_recall(y_true_binary, score) -> tuple[np.ndarray, np.ndarray, float]:
    """(precision, recall, average precision); AP is NaN with a warning when no positive exists."""
    y = np.asarray(y_true_binary).astype(bool)
    if not y.any():
        return np.array([1.0]), np.array([0.0]), _nan("average precision is undefined without positives")
    precision, recall, _ = precision_recall_curve(y, score)
    return precision, recall, float(average_precision_score(y, score))


def bootstrap_auc_ci(
    y_true_binary, score, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95, groups=None
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval for ROC AUC (resampling cases with replacement; with `groups`, one
    id per case, resampling whole groups: several images of one patient are not independent cases).

    Resamples that miss a class are skipped; if fewer than half survive, returns NaNs with a warning.
    """
    y = np.asarray(y_true_binary).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    if y.all() or not y.any():
        return _nan("AUC confidence interval needs both classes"), float("nan")
    rng = np.random.default_rng(seed)
    if groups is not None:
        aucs = _group_bootstrap_aucs(y, s, np.asarray(groups), n_boot, rng)
    else:
        aucs = []
        for start in range(0, n_boot, 100):  # chunks bound the memory of the [boots, n] index matrix
            idx = rng.integers(0, len(y), (min(100, n_boot - start), len(y)))
            aucs.append(rank_auc(y[idx], s[idx]))
        aucs = np.concatenate(aucs)
    aucs = aucs[np.isfinite(aucs)]  # resamples that miss a class
    if len(aucs) < n_boot / 2:
        return _nan("too few bootstrap resamples hold both classes"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(aucs, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _group_bootstrap_aucs(y: np.ndarray, s: np.ndarray, groups: np.ndarray, n_boot: int, rng) -> np.ndarray:
    """AUC of `n_boot` cluster-bootstrap resamples: as many groups as there are, drawn with replacement."""
    _, member = np.unique(groups, return_inverse=True)
    order = np.argsort(member, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(member[order])) + 1)
    aucs = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        aucs[b] = rank_auc(y[idx][None], s[idx][None])[0]
    return aucs


def rank_auc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUC of each row of boolean labels `y` [B, n] and scores `s` [B, n] by the Mann-Whitney rank
    formula (ties count half); NaN for a row with a single class. Equals sklearn's roc_auc_score."""
    ranks = rankdata(s, axis=1)
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def ovr_auc(y_true, scores, *, n_classes: int) -> list[float]:
    """One-vs-rest ROC AUC per class (NaN for a class absent from `y_true`)."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateMetricWarning)
        return [roc_auc(y_true == k, scores[:, k]) for k in range(n_classes)]


def reliability(y_true, scores, *, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Reliability-diagram data for the top-class confidence: per equal-width bin, mean confidence,
    accuracy and count."""
    scores = np.asarray(scores)
    confidence = scores.max(axis=1)
    correct = scores.argmax(axis=1) == np.asarray(y_true)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)  # confidence 1.0 joins the last bin
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return {"confidence": conf, "accuracy": acc, "count": count, "edges": np.linspace(0, 1, n_bins + 1)}


def expected_calibration_error(y_true, scores, *, n_bins: int = 15) -> float:
    """ECE: sum over bins of (bin share) x |accuracy - mean confidence| (Guo et al. 2017)."""
    r = reliability(y_true, scores, n_bins=n_bins)
    used = r["count"] > 0
    weights = r["count"][used] / r["count"].sum()
    return float(np.sum(weights * np.abs(r["accuracy"][used] - r["confidence"][used])))
