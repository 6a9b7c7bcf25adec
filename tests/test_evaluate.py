import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from cnnlab.config import RunConfig, with_overrides
from cnnlab.evaluate.analysis import PredictionTable, multiclass_summary
from cnnlab.evaluate.evaluate import format_accuracy_table
from cnnlab.pipeline import train
from helpers import write_digit_folder


def test_per_class_accuracy_matches_hand_count():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 0, 1, 1, 0])
    probs = np.eye(4)[predicted] * 0.7 + 0.075
    table = multiclass_summary(PredictionTable([str(i) for i in range(6)], labels, probs, ["a", "b", "c", "d"]))
    table = table["per_class"]
    assert (table["a"]["correct"], table["a"]["total"], table["a"]["accuracy"]) == (2, 3, 2 / 3)
    assert table["b"]["accuracy"] == 1.0 and table["c"]["accuracy"] == 0.0
    assert table["d"]["total"] == 0 and np.isnan(table["d"]["accuracy"])  # no test images: NaN, no crash


def test_accuracy_table_uses_the_course_format():
    result = {
        "test_loss": 0.3, "n_test": 1100, "accuracy": 1070 / 1100,
        "per_class": {"Sneaker": {"correct": 970, "total": 1000, "accuracy": 0.97},
                      "Bag": {"correct": 100, "total": 100, "accuracy": 1.0}},
    }  # fmt: skip
    text = format_accuracy_table(result)
    assert "Test Accuracy of Sneaker: 97% (970/1000)" in text
    assert "Test Accuracy (Overall): 97.27% (1070/1100)" in text


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    data = write_digit_folder(tmp_path_factory.mktemp("digits"), classes=(0, 1, 7), per_class=60, size=24)
    cfg = with_overrides(RunConfig(), "data", source=f"folder:{data}", image_size=16)
    cfg = with_overrides(cfg, "model", name="simple_cnn_bn")  # a trained run's files (auto is tested in test_auto)
    cfg = with_overrides(cfg, "train", epochs=4)
    runs = tmp_path_factory.mktemp("runs")
    return train(cfg, runs_dir=runs, name="fold", log=lambda _: None), data


def test_run_folder_has_the_documented_files(folder_run):
    result, _ = folder_run
    names = {p.name for p in result.run_dir.iterdir()}
    expected = {"config.yaml", "splits.json", "metrics.csv", "best.pt", "last.pt", "predictions.csv",
                "valid_predictions.csv", "eval.json"}  # fmt: skip
    assert expected <= names
    with (result.run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {
        "epoch",
        "train_loss",
        "train_acc",
        "valid_loss",
        "valid_acc",
        "lr",
        "seconds",
        "images_per_s",
    }


def test_eval_json_agrees_with_predictions_csv(folder_run):
    result, _ = folder_run
    ev = json.loads((result.run_dir / "eval.json").read_text())
    with (result.run_dir / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert ev["n_test"] == len(rows) == sum(r["total"] for r in ev["per_class"].values())
    assert ev["accuracy"] == pytest.approx(np.mean([r["label"] == r["predicted"] for r in rows]))
    assert ev["accuracy"] >= 0.9  # three distinct real digits are easy
    probs = np.array([[float(r[f"p_digit{c}"]) for c in (0, 1, 7)] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert rows[0]["id"].endswith(".png")


def test_predict_converts_any_size_and_mode(folder_run, cli, tmp_path):
    result, data = folder_run
    src = Image.open(next((data / "digit7").glob("*.png")))
    big_rgb = tmp_path / "seven.jpg"
    src.convert("RGB").resize((100, 60)).save(big_rgb, quality=95)
    out_csv = tmp_path / "out.csv"
    code, out, err = cli("predict", result.run_dir, big_rgb, data / "digit1", "--top-k", "2", "--output", out_csv)
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.endswith("%")]
    assert len(lines) == 61 and "seven.jpg: digit7" in lines[0]
    with out_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert sum(r["predicted"] == "digit1" for r in rows[1:]) >= 55
    code, _, err = cli("predict", result.run_dir, big_rgb, "--output", out_csv)
    assert code == 2 and "already exists" in err


def test_dry_run_writes_nothing(cli, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = cli("train", "--data", "digits", "--runs-dir", runs, "--dry-run")
    assert code == 0, err
    assert "dry run ok" in out and not runs.exists()


def test_positive_class_travels_one_route_through_dry_run_evaluate_and_report(cli, tmp_path):
    """--positive is stored in config.yaml: the dry run scores it, a later evaluate (and resume) reads it, and
    the report recomputes the binary block with the run's seed (7 here), exactly as `cnnlab evaluate` does."""
    runs = tmp_path / "runs"
    common = ("--data", "digits", "--model", "mlp", "--seed", "7", "--positive", "3", "--runs-dir", runs)
    code, out, err = cli("train", *common, "--epochs", "1", "--dry-run")
    assert code == 0, err
    assert "3 vs rest: AUC" in out and not runs.exists()
    code, out, err = cli("train", *common, "--epochs", "2", "--name", "r", "--no-report")
    assert code == 0, err
    saved = json.loads((runs / "r" / "eval.json").read_text())["binary"]
    assert saved["positive"] == "3"
    (runs / "r" / "eval.json").unlink()
    code, _, err = cli("evaluate", runs / "r")  # no flag: the run's own positive class
    assert code == 0, err
    assert json.loads((runs / "r" / "eval.json").read_text())["binary"] == saved
    code, _, err = cli("report", runs / "r", "--threshold-rule", "youden")
    assert code == 0, err
    assert json.loads((runs / "r" / "eval.json").read_text())["binary"]["threshold_rule"] == "youden"
    code, _, err = cli("report", runs / "r", "--threshold-rule", "sensitivity:0.95")
    assert code == 0, err
    again = json.loads((runs / "r" / "eval.json").read_text())["binary"]
    assert again["auc_ci95"] == saved["auc_ci95"]  # the run's seed, not 0
    assert again["threshold"] == pytest.approx(saved["threshold"], abs=1e-6)  # the CSV keeps 6 decimals
    assert [again[k] for k in ("tp", "fp", "fn", "tn")] == [saved[k] for k in ("tp", "fp", "fn", "tn")]
    code, _, err = cli("report", runs / "r", "--threshold-rule", "sensitivty:0.9")
    assert code == 2 and "unknown threshold rule" in err


def test_mirror_averaging_is_the_mean_of_the_two_softmaxes():
    import torch

    from cnnlab.predict.infer import mean_of_views

    a, b = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    assert torch.allclose(mean_of_views(a, b).softmax(1), (a.softmax(1) + b.softmax(1)) / 2)


def test_test_time_flips_are_chosen_on_validation_then_followed(tmp_path):
    """With label-keeping flips, evaluation compares the validation loss with and without mirror averaging,
    scores test once in the chosen way, and records the choice for later evaluations and predictions."""
    import yaml

    from cnnlab.evaluate.analysis import read_predictions
    from cnnlab.evaluate.evaluate import evaluate_run

    cfg = with_overrides(RunConfig(), "data", source="digits", flips=True)
    cfg = with_overrides(cfg, "train", epochs=3)
    lines = []
    run = train(cfg, runs_dir=tmp_path, name="tta", log=lines.append, report=False).run_dir
    line = next(x for x in lines if x.startswith("test-time flips: "))
    found = re.search(r"valid loss ([\d.]+) averaged with mirror images vs ([\d.]+) without", line)
    with_mirror, without = float(found[1]), float(found[2])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    ev = json.loads((run / "eval.json").read_text())
    assert ev["tta"] is (with_mirror < without) and ev["tta_reason"] in line  # decided by evaluation, kept there
    assert saved["evaluation"]["tta"] is None  # config.yaml keeps the request (auto); training wrote it
    valid = read_predictions(run / "valid_predictions.csv")  # written the chosen way
    loss = -np.log(np.clip(valid.probs[np.arange(len(valid.labels)), valid.labels], 1e-12, 1)).mean()
    assert loss == pytest.approx(min(with_mirror, without), abs=2e-3)
    again = []
    assert evaluate_run(run, log=again.append)["accuracy"] == ev["accuracy"]
    assert not any(x.startswith("test-time flips") for x in again)  # follows the record, no new choice


def test_a_frozen_head_on_photos_decides_test_time_flips_by_its_validation_loss(tmp_path):
    """A frozen backbone's head never learns whether flips keep a folder's labels, so on real photos (scikit-image's
    LFW crops) evaluation measures it: the validation loss with and without mirror averaging, the mirror images'
    features read through the same cache, the valid predictions written the chosen way."""
    import yaml

    from cnnlab.data.samples import write_sample_folder
    from cnnlab.evaluate.analysis import read_predictions

    write_sample_folder("lfw", tmp_path / "lfw")
    # at 32 px the faces are hard enough for a validation loss above 0.0000 (at 224 px both views score 100%)
    cfg = with_overrides(RunConfig(), "data", source=f"folder:{tmp_path / 'lfw'}", root=str(tmp_path / "root"),
                         audit="off", image_size=32)  # fmt: skip
    cfg = with_overrides(cfg, "model", name="efficientnet_lite0", strategy="feature-extract")
    lines = []
    run = train(cfg, runs_dir=tmp_path / "runs", name="lfw", log=lines.append, report=False).run_dir
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["flips"] is None  # undecided by training
    line = next(x for x in lines if x.startswith("test-time flips: "))
    found = re.search(r"valid loss ([\d.]+) averaged with mirror images vs ([\d.]+) without", line)
    with_mirror, without = float(found[1]), float(found[2])
    assert with_mirror != without  # the mirror images were scored, not the plain ones twice
    ev = json.loads((run / "eval.json").read_text())
    assert ev["tta"] is (with_mirror < without) and ev["accuracy"] > 0.8
    valid = read_predictions(run / "valid_predictions.csv")
    loss = -np.log(np.clip(valid.probs[np.arange(len(valid.labels)), valid.labels], 1e-12, 1)).mean()
    assert loss == pytest.approx(min(with_mirror, without), abs=2e-3)


def test_flips_that_change_labels_are_never_averaged(tmp_path):
    """Digits change meaning when mirrored (flips off): evaluation never averages, and records no choice."""
    cfg = with_overrides(RunConfig(), "data", source="digits")
    cfg = with_overrides(cfg, "model", name="mlp")
    result = train(
        with_overrides(cfg, "train", epochs=1), runs_dir=tmp_path, name="d", log=lambda _: None, report=False
    )
    assert result.evaluation["tta"] is False
    assert "tta" not in yaml_of(result.run_dir)["decisions"] and yaml_of(result.run_dir)["data"]["flips"] is False


def yaml_of(run_dir):
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())
