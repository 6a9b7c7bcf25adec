"""`cnnlab score` on predictions made elsewhere: generic and ISIC-2017 layouts, and every bad input."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score


def _write(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(str(v) for v in r) for r in rows]) + "\n")
    return path


@pytest.fixture
def isic(tmp_path):
    rng = np.random.default_rng(0)
    folders = ["melanoma"] * 30 + ["nevus"] * 50 + ["seborrheic_keratosis"] * 20
    ids = [f"data/test/{f}/ISIC_{i:07d}.jpg" for i, f in enumerate(folders)]
    mel = np.array([f == "melanoma" for f in folders])
    sk = np.array([f == "seborrheic_keratosis" for f in folders])
    t1 = np.clip(rng.normal(0.35 + 0.3 * mel, 0.15), 0, 1).round(4)
    t2 = np.clip(rng.normal(0.3 + 0.4 * sk, 0.15), 0, 1).round(4)
    path = _write(tmp_path / "predictions.csv", ["Id", "task_1", "task_2"], zip(ids, t1, t2, strict=True))
    return path, ids, mel, sk, t1, t2


def test_isic_layout_with_truth_from_paths(cli, isic, tmp_path):
    path, _, mel, sk, t1, t2 = isic
    code, out, err = cli("score", path, "--output", tmp_path / "r.json")
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["category_1"]["auc"] == pytest.approx(roc_auc_score(mel, t1))
    assert result["category_2"]["auc"] == pytest.approx(roc_auc_score(sk, t2))
    assert result["category_3_mean_auc"] == pytest.approx((roc_auc_score(mel, t1) + roc_auc_score(sk, t2)) / 2)
    assert "Category 1 (melanoma, task_1): AUC" in out and "Category 3 (mean AUC)" in out
    called = t1 >= 0.5
    assert result["category_1"]["sensitivity"] == pytest.approx(called[mel].mean())


def test_isic_layout_with_official_truth_file(cli, isic, tmp_path):
    path, ids, mel, sk, t1, _ = isic
    stems = [i.rsplit("/", 1)[1][:-4] for i in ids]
    truth = _write(tmp_path / "truth.csv", ["image_id", "melanoma", "seborrheic_keratosis"],
                   list(zip(stems, mel.astype(int), sk.astype(int), strict=True))[::-1])  # fmt: skip
    code, out, err = cli("score", path, "--truth", truth, "--threshold", "0.4")
    assert code == 0, err
    assert f"AUC {roc_auc_score(mel, t1):.4f}" in out and "at threshold 0.40" in out


def test_generic_binary_with_truth(cli, tmp_path):
    pred = _write(tmp_path / "p.csv", ["id", "score"], [("a", 0.9), ("b", 0.2), ("c", 0.7), ("d", 0.4)])
    truth = _write(tmp_path / "t.csv", ["id", "label"], [("d", "benign"), ("c", "malignant"), ("b", "benign"),
                                                         ("a", "malignant")])  # fmt: skip
    code, out, err = cli("score", pred, "--truth", truth, "--positive", "malignant")
    assert code == 0, err
    assert "AUC 1.0000" in out and "sensitivity 1.0000, specificity 1.0000" in out


def _bad(cli, *args):
    code, _, err = cli("score", *args)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_inputs_name_file_column_and_row(cli, tmp_path):
    good = _write(tmp_path / "p.csv", ["id", "score"], [("a", 0.9), ("b", 0.2)])
    truth = _write(tmp_path / "t.csv", ["id", "label"], [("a", 1), ("b", 0)])
    assert "row 3" in _bad(
        cli, _write(tmp_path / "hi.csv", ["id", "score"], [("a", 0.9), ("b", 1.3)]), "--truth", truth
    )
    err = _bad(cli, _write(tmp_path / "nan.csv", ["id", "score"], [("a", "nan"), ("b", 0.1)]), "--truth", truth)
    assert "column 'score' row 2" in err and "not a probability" in err
    assert "is not in" in _bad(
        cli, _write(tmp_path / "ids.csv", ["id", "score"], [("a", 0.9), ("z", 0.1)]), "--truth", truth
    )
    three = _write(tmp_path / "t3.csv", ["id", "label"], [("a", 1), ("b", 0), ("c", 1)])
    assert "has 2 rows but" in _bad(cli, good, "--truth", three)
    assert "unknown positive class 'cat'" in _bad(cli, good, "--truth", truth, "--positive", "cat")
    assert "--threshold must be in [0, 1]" in _bad(cli, good, "--truth", truth, "--threshold", "1.5")
    (tmp_path / "empty.csv").write_text("")
    assert "is empty" in _bad(cli, tmp_path / "empty.csv", "--truth", truth)
    assert "file not found" in _bad(cli, tmp_path / "missing.csv")
