"""One scale of evidence for the model search: every candidate's probabilities on the same validation images, scored
by one metric, and a lead within one paired standard error counted as a tie.

Log loss by default (lower is better): a proper score that sees how sure each answer is, so it separates candidates
that accuracy on a hundred images cannot (blood cells, 128 validation images: a fine-tuned Lite0 right on 2 images
more than the frozen head, a tie, but 0.381 against 0.500 in log loss; it was 2.5 points better on the test images:
bench/RESULTS.md). With `--positive`, the positive class's ROC AUC (the ranking the user asked to be judged by).
The standard error is the paired one, since the candidates answer the same images: for log loss the standard
deviation of the per-image loss differences over sqrt(n), for AUC the standard deviation of the AUC difference over
seeded bootstrap resamples of the images. Accuracy is shown beside it, never compared.
"""

from __future__ import annotations

import numpy as np

from cnnlab.evaluate.metrics import roc_auc

MIN_MARGIN = 0.005  # a tie below this whatever the standard error (half a point of AUC, 0.005 nats of log loss)
BOOTSTRAP = 200  # resamples for the AUC difference's standard error
EPS = 1e-12  # probabilities are clipped here before the log (a sure wrong answer costs 27.6 nats, not infinity)


def metric_name(positive: str | None) -> str:
    return f"validation AUC of {positive}" if positive is not None else "validation log loss"


def best_by(positive: str | None) -> str:
    """What the best candidate is best by, as the decision says it."""
    return f"{'highest' if positive is not None else 'lowest'} {metric_name(positive)}"


def image_losses(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each image's negative log probability of its true class (rows renormalised: float32 softmax rows miss 1)."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)
    return -np.log(probs[np.arange(len(labels)), labels] / probs.sum(1))


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log probability of the true class."""
    return float(image_losses(probs, labels).mean())


def score(probs: np.ndarray, labels: np.ndarray, positive_index: int | None) -> float:
    """Log loss of `probs` [n, classes] against `labels`, or the positive class's AUC."""
    if positive_index is None:
        return log_loss(probs, labels)
    return float(roc_auc(labels == positive_index, probs[:, positive_index]))


def gain(new: float, old: float, positive_index: int | None) -> float:
    """How much better score `new` is than `old` (positive: better), whichever way the metric runs."""
    return new - old if positive_index is not None else old - new


def best(scores: list[float], positive_index: int | None) -> int:
    """The index of the best of `scores` (the first on a tie)."""
    return int(np.argmax(scores) if positive_index is not None else np.argmin(scores))


def tie_margin(top: np.ndarray, other: np.ndarray, labels: np.ndarray, positive_index: int | None, *,
               seed: int = 0) -> float:  # fmt: skip
    """How far behind `top`'s score `other` still ties with it: one paired standard error, at least MIN_MARGIN."""
    if len(labels) < 2:
        return MIN_MARGIN
    if positive_index is None:
        differences = image_losses(top, labels) - image_losses(other, labels)
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
