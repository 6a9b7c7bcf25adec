import numpy as np
import pytest
from sklearn.datasets import load_digits

from cnnlab.data.splits import make_splits, stratified_split


@pytest.fixture(scope="module")
def labels():
    return load_digits().target


def _splits(labels, seed=0, **kw):
    parts = {"train": np.arange(len(labels))}
    return make_splits(labels, parts, valid_fraction=0.2, test_fraction=0.2, seed=seed, **kw)


def test_splits_are_disjoint_and_cover_the_pool(labels):
    s = _splits(labels)
    all_idx = np.concatenate([s["train"], s["valid"], s["test"]])
    assert len(all_idx) == len(np.unique(all_idx)) == len(labels)


def test_splits_are_stratified_within_one_percent(labels):
    s = _splits(labels)
    overall = np.bincount(labels) / len(labels)
    for part in s.values():
        share = np.bincount(labels[part], minlength=10) / len(part)
        assert np.abs(share - overall).max() < 0.01


def test_same_seed_same_split_other_seed_other_split(labels):
    a, b, c = _splits(labels, seed=3), _splits(labels, seed=3), _splits(labels, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["valid"], c["valid"])


def test_official_test_partition_is_kept_and_valid_comes_from_train(labels):
    parts = {"train": np.arange(1500), "test": np.arange(1500, len(labels))}
    s = make_splits(labels, parts, valid_fraction=0.2, test_fraction=0.5, seed=0)
    assert np.array_equal(s["test"], parts["test"])
    assert len(s["valid"]) == pytest.approx(300, abs=10) and s["valid"].max() < 1500


def test_train_limit_takes_a_stratified_subset(labels):
    s = _splits(labels, train_limit=200)
    assert abs(len(s["train"]) - 200) <= 10
    assert np.bincount(labels[s["train"]]).min() >= 18


def test_stratified_split_fraction_per_class():
    labels = np.array([0] * 100 + [1] * 10)
    rest, taken = stratified_split(labels, np.arange(110), 0.3, seed=0)
    assert np.bincount(labels[taken]).tolist() == [30, 3]
    assert len(rest) + len(taken) == 110
