"""Decision thresholds: chosen on validation predictions by a stated rule, then frozen for the test set.

Rules (the course's "where should we put the threshold?"):
  sensitivity:0.95  highest threshold whose sensitivity >= 0.95 (miss no cases; the conservative medical choice)
  specificity:0.95  lowest threshold whose specificity >= 0.95
  youden            maximise sensitivity + specificity - 1
  max-f1            maximise F1 of the positive class
  cost:5            minimise 5 x false negatives + 1 x false positives
  fixed:0.5         use this threshold as given
A case is called positive when its score >= threshold.
"""

from __future__ import annotations

import numpy as np

from cnnlab.config import DEFAULT_RULE, RULES, ThresholdRule, parse_rule
from cnnlab.errors import CnnlabError

# the rule grammar is part of the run configuration (validated once, when the config is built)
__all__ = ["DEFAULT_RULE", "RULES", "ThresholdRule", "parse_rule", "choose_threshold", "binary_metrics"]


def _operating_points(y: np.ndarray, s: np.ndarray):
    """Every distinct threshold (descending) with its TP, FP, FN, TN counts."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tp = np.cumsum(y_sorted)[last_of_value]
    fp = np.cumsum(~y_sorted)[last_of_value]
    pos, neg = y.sum(), (~y).sum()
    return s_sorted[last_of_value], tp, fp, pos - tp, neg - fp


def choose_threshold(y_true_binary, score, rule: ThresholdRule) -> float:
    """The threshold `rule` picks on these (validation) labels and scores."""
    if rule.kind == "fixed":
        return float(rule.value)
    y = np.asarray(y_true_binary).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    if y.all() or not y.any():
        raise CnnlabError("choosing a threshold needs validation cases of both classes (enlarge the valid split)")
    t, tp, fp, fn, tn = _operating_points(y, s)
    sens, spec = tp / (tp + fn), tn / (tn + fp)
    if rule.kind == "sensitivity":
        return float(t[np.flatnonzero(sens >= rule.value)[0]])  # thresholds descend: first = highest
    if rule.kind == "specificity":
        ok = np.flatnonzero(spec >= rule.value)
        return float(t[ok[-1]]) if len(ok) else float(np.nextafter(t[0], np.inf))  # none: call nothing positive
    if rule.kind == "youden":
        objective = sens + spec - 1
    elif rule.kind == "max-f1":
        objective = 2 * tp / (2 * tp + fp + fn)
    else:  # cost
        objective = -(rule.value * fn + fp)
    return float(t[int(np.argmax(objective))])  # ties: the highest threshold


def binary_metrics(y_true_binary, score, threshold: float) -> dict[str, float]:
    """Confusion counts and sensitivity, specificity, PPV, NPV, accuracy at `threshold`."""
    y = np.asarray(y_true_binary).astype(bool)
    called = np.asarray(score, dtype=np.float64) >= threshold
    tp, fp = int((called & y).sum()), int((called & ~y).sum())
    fn, tn = int((~called & y).sum()), int((~called & ~y).sum())

    def ratio(a, b):
        return a / b if b else float("nan")

    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn), "accuracy": ratio(tp + tn, len(y)),
    }  # fmt: skip
