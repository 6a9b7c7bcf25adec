"""One scale of evidence for the model search: every candidate's probabilities on the same validation images, scored
by the metric the user asked for, and a lead within one paired standard error counted as a tie.

Accuracy by default; with `--positive`, the positive class's ROC AUC (the ranking the user asked to be judged by).
The standard error is the paired one, since the candidates answer the same images: for accuracy the standard
deviation of the per-image differences over sqrt(n) (as transfer.tie_margin pairs the frozen candidates), for AUC
the standard deviation of the AUC difference over seeded bootstrap resamples of the images.
"""

from __future__ import annotations

import numpy as np

from cnnlab.evaluate.metrics import roc_auc

MIN_MARGIN = 0.005  # a tie below this whatever the standard error (half a point of accuracy)
BOOTSTRAP = 200  # resamples for the AUC difference's standard error


def metric_name(class_names: list[str], positive: str | None) -> str:
    return f"validation AUC of {positive}" if positive is not None else "validation accuracy"


def score(probs: np.ndarray, labels: np.ndarray, positive_index: int | None) -> float:
    """Accuracy of `probs` [n, classes] against `labels`, or the positive class's AUC."""
    if positive_index is None:
        return float(np.mean(probs.argmax(1) == labels))
    return float(roc_auc(labels == positive_index, probs[:, positive_index]))


def tie_margin(top: np.ndarray, other: np.ndarray, labels: np.ndarray, positive_index: int | None, *,
               seed: int = 0) -> float:  # fmt: skip
    """How far below `top`'s score `other` still ties with it: one paired standard error, at least MIN_MARGIN."""
    if len(labels) < 2:
        return MIN_MARGIN
    if positive_index is None:
        differences = (top.argmax(1) == labels).astype(float) - (other.argmax(1) == labels).astype(float)
        return max(MIN_MARGIN, float(differences.std() / np.sqrt(len(labels))))
    rng = np.random.default_rng(seed)
    positive = labels == positive_index
    deltas = []
    for _ in range(BOOTSTRAP):
        idx = rng.integers(0, len(labels), len(labels))
        if positive[idx].all() or not positive[idx].any():
            continue  # one class only: no AUC on this resample
        deltas.append(score(top[idx], labels[idx], positive_index) - score(other[idx], labels[idx], positive_index))
    return max(MIN_MARGIN, float(np.std(deltas))) if len(deltas) > 1 else MIN_MARGIN
