"""Metrics equal scikit-learn's on random and real predictions; degenerate input warns and gives NaN."""

import numpy as np
import pytest
from sklearn import metrics as skm

from cnnlab.evaluate import metrics as M


@pytest.fixture(scope="module")
def random_preds():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    logits = rng.normal(size=(500, 4)) + 1.5 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def test_confusion_and_accuracies_match_sklearn(random_preds):
    y, p = random_preds
    pred = p.argmax(1)
    assert np.array_equal(M.confusion_matrix(y, pred, n_classes=4), skm.confusion_matrix(y, pred))
    assert np.allclose(
        M.confusion_matrix(y, pred, n_classes=4, normalize="true"), skm.confusion_matrix(y, pred, normalize="true")
    )
    assert M.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert M.balanced_accuracy(y, pred, n_classes=4) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    for k in (2, 3):
        assert M.top_k_accuracy(y, p, k=k) == pytest.approx(skm.top_k_accuracy_score(y, p, k=k))


def test_per_class_report_matches_sklearn_and_hand_specificity(random_preds):
    y, p = random_preds
    pred = p.argmax(1)
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred)
    for k, r in enumerate(M.per_class_report(y, pred, n_classes=4)):
        assert (r.precision, r.recall, r.f1, r.support) == pytest.approx((prec[k], rec[k], f1[k], sup[k]))
        negatives = y != k
        assert r.specificity == pytest.approx(np.mean(pred[negatives] != k))


def test_auc_curves_and_ap_match_sklearn(random_preds):
    y, p = random_preds
    yb, s = y == 2, p[:, 2]
    assert M.roc_auc(yb, s) == pytest.approx(skm.roc_auc_score(yb, s))
    assert M.ovr_auc(y, p, n_classes=4)[2] == pytest.approx(skm.roc_auc_score(yb, s))
    _, _, ap = M.precision_recall(yb, s)
    assert ap == pytest.approx(skm.average_precision_score(yb, s))


def test_metrics_do_not_depend_on_sample_order(random_preds):
    y, p = random_preds
    perm = np.random.default_rng(1).permutation(len(y))
    yb, s = y == 1, p[:, 1]
    assert M.roc_auc(yb, s) == pytest.approx(M.roc_auc(yb[perm], s[perm]))
    assert M.expected_calibration_error(y, p) == pytest.approx(M.expected_calibration_error(y[perm], p[perm]))
    a = M.per_class_report(y, p.argmax(1), n_classes=4)
    b = M.per_class_report(y[perm], p[perm].argmax(1), n_classes=4)
    assert a == b


def test_bootstrap_ci_brackets_the_auc_and_is_seeded(random_preds):
    y, p = random_preds
    yb, s = y == 0, p[:, 0]
    lo, hi = M.bootstrap_auc_ci(yb, s, n_boot=300, seed=3)
    assert lo < M.roc_auc(yb, s) < hi and hi - lo < 0.2
    assert (lo, hi) == M.bootstrap_auc_ci(yb, s, n_boot=300, seed=3)


def test_ece_hand_computed():
    # two bins used: conf 0.9 (2 cases, 1 right) and conf 0.6 (2 cases, 2 right)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert M.expected_calibration_error(y, probs, n_bins=10) == pytest.approx(expected)


def test_degenerate_input_warns_and_returns_nan():
    with pytest.warns(M.DegenerateMetricWarning):
        assert np.isnan(M.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    with pytest.warns(M.DegenerateMetricWarning):
        assert np.isnan(M.bootstrap_auc_ci([0, 0], [0.1, 0.2])[0])
    reports = M.per_class_report([0, 0, 1], [0, 0, 1], n_classes=3)  # class 2 absent
    assert reports[2].support == 0 and np.isnan(reports[2].recall) and np.isnan(reports[2].precision)
    assert np.isnan(M.ovr_auc(np.array([0, 0, 1]), np.eye(3)[[0, 0, 1]], n_classes=3)[2])


def test_rank_auc_used_by_the_bootstrap_equals_sklearn(random_preds):
    y, p = random_preds
    yb = np.stack([y == 0, y == 3])
    s = np.stack([p[:, 0], np.round(p[:, 3], 1)])  # the second row has many ties
    expected = [skm.roc_auc_score(yb[0], s[0]), skm.roc_auc_score(yb[1], s[1])]
    assert M.rank_auc(yb, s) == pytest.approx(expected)
