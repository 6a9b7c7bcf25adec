"""Ensemble selection (training/ensemble.py) and the ensemble as one model (models/ensemble.py): weights chosen by
greedy selection with replacement, kept only on cross-fitted evidence, and a run whose best.pt is an ensemble is
evaluated, predicted from and exported as any other run."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from cnnlab.config import ModelConfig, RunConfig, with_overrides
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.evaluate import evaluate_run
from cnnlab.export import exporter as E
from cnnlab.models import create_model
from cnnlab.models.checkpoint import Checkpoint, InputSpec, load_checkpoint, save_checkpoint
from cnnlab.models.registry import ENSEMBLE
from cnnlab.pipeline import resume, train
from cnnlab.predict.infer import computed_shape, model_from_checkpoint, predict_batch_size, predict_images
from cnnlab.runs import RunFile, open_run, write_run_config
from cnnlab.training import ensemble, evidence
from helpers import write_digit_folder


def test_selection_alternates_between_members_that_are_right_on_different_images():
    """Hand-traced: A is sure on image 0 and unsure on image 1, B the reverse. Round 1 ties (log loss 0.399 each),
    and goes to A; adding B then gives 0.357 against A's 0.399; and so on in turns: ten rounds each."""
    labels = np.array([0, 1])
    a = np.array([[0.9, 0.1], [0.5, 0.5]])
    b = np.array([[0.5, 0.5], [0.1, 0.9]])
    assert evidence.log_loss(a, labels) == pytest.approx(-(np.log(0.9) + np.log(0.5)) / 2)
    assert ensemble.select_weights([a, b], labels).tolist() == [0.5, 0.5]


def test_a_member_that_only_adds_noise_gets_no_weight_and_nothing_is_kept():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    good = np.full((200, 3), 0.1)
    good[np.arange(200), labels] = 0.8
    noise = rng.dirichlet(np.ones(3), 200)
    chosen = ensemble.select([good, noise], labels, None)
    assert chosen.weights.tolist() == [1.0, 0.0] and not chosen.kept
    assert "not kept" in chosen.verdict(["good", "noise"])


def test_two_members_right_on_different_images_are_kept_with_their_gain():
    """Each member is right (0.9) on its own half of 200 images and slightly wrong (0.45 vs 0.55) on the other:
    alone 50% each, log loss (0.105 + 0.799) / 2 = 0.452; averaged, right on every image at 0.675, log loss 0.393.
    The cross-fitted gain (weights chosen without each fold: about 0.06) is past its paired standard error."""
    labels = np.tile([0, 1], 100)
    first = np.arange(200) < 100

    def member(right_on: np.ndarray) -> np.ndarray:
        p_true = np.where(right_on, 0.9, 0.45)
        out = np.empty((200, 2))
        out[np.arange(200), labels] = p_true
        out[np.arange(200), 1 - labels] = 1 - p_true
        return out

    chosen = ensemble.select([member(first), member(~first)], labels, None)
    assert chosen.best_score == pytest.approx(-(np.log(0.9) + np.log(0.45)) / 2)
    assert chosen.score == pytest.approx(-np.log(0.675), abs=0.01) and chosen.gain > chosen.margin and chosen.kept
    assert chosen.weights.tolist() == [0.5, 0.5] and 0.01 < chosen.margin < chosen.gain


def test_the_ensemble_module_averages_its_members_probabilities_each_on_its_own_normalisation():
    """The input is on the 0..1 scale; each member normalises it with its own statistics, and the output's softmax
    is the weighted mean of the members' probabilities."""
    torch.manual_seed(0)
    members = [
        {"name": "mlp", "strategy": None, "options": {}, "mean": [0.2], "std": [0.5], "weight": 3.0},
        {"name": "simple_cnn_bn", "strategy": None, "options": {}, "mean": [0.6], "std": [0.25], "weight": 1.0},
    ]  # fmt: skip
    model = create_model(ENSEMBLE, num_classes=4, in_channels=1, image_size=16, options={"members": members}).eval()
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        first = torch.softmax(model.members[0]((x - 0.2) / 0.5), 1)
        second = torch.softmax(model.members[1]((x - 0.6) / 0.25), 1)
        out = torch.softmax(model(x), 1)
        by_parts = torch.softmax(model.forward_head(model.forward_features(x)), 1)
    assert torch.allclose(out, 0.75 * first + 0.25 * second, atol=1e-6)  # weights normalised to sum to 1
    assert torch.allclose(by_parts, out, atol=1e-6)


def test_a_grey_folder_ensemble_feeds_each_member_the_channels_it_was_trained_on(tmp_path):
    """On grey images (Fashion-MNIST) the search can join a frozen ImageNet head (grey broadcast to RGB by its own
    statistics) with a grey from-scratch CNN: the ensemble takes the folder's one channel and each member broadcasts
    it as in its own run (before, the input took the RGB member's three channels and the grey CNN refused it)."""
    torch.manual_seed(0)
    members = {
        "efficientnet_lite0": (InputSpec(32, 1, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "feature-extract"),
        "simple_cnn_bn": (InputSpec(32, 1, (0.3,), (0.35,)), None),
    }
    paths, nets = [], []
    for name, (spec, strategy) in members.items():
        net = create_model(name, num_classes=3, in_channels=1, image_size=32, strategy=strategy).eval()
        config = RunConfig(model=ModelConfig(name=name, strategy=strategy)).to_dict()
        paths.append(tmp_path / f"{name}.pt")
        save_checkpoint(Checkpoint(name, ["a", "b", "c"], spec, config).at(net.state_dict(), epoch=1, best={}),
                        paths[-1])  # fmt: skip
        nets.append((net, spec.normalization()))
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / RunFile.METRICS).write_text("epoch,valid_loss\n1,0.5\n")
    ensemble.write_ensemble([(paths[0], 0.5), (paths[1], 0.5)], tmp_path / "ens", RunConfig(),
                            history_from=tmp_path / "history", valid_loss=0.5)  # fmt: skip
    ckpt = load_checkpoint(tmp_path / "ens" / RunFile.BEST)
    assert ckpt.preprocessing.channels == 1 and len(ckpt.preprocessing.mean) == 1
    model = model_from_checkpoint(ckpt, tmp_path / "ens" / RunFile.BEST).eval()
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        out = torch.softmax(model(ckpt.preprocessing.normalization().apply(images)), 1)
        alone = [torch.softmax(net(norm.apply(images)), 1) for net, norm in nets]
    assert torch.allclose(out, 0.5 * alone[0] + 0.5 * alone[1], atol=1e-5)
    # predicted in batches sized at the 224-px RGB side its ImageNet member computes at, not the 32-px input's
    # (a Fashion-MNIST ensemble's evaluation held 1,000 images at 224 px: 14 GB)
    assert computed_shape(model, (1, 32, 32)) == (3, 224, 224)
    assert predict_batch_size(computed_shape(model, (1, 32, 32))) == predict_batch_size((3, 224, 224)) <= 64


@pytest.fixture(scope="module")
def ensemble_run(digits_cnn_run, tmp_path_factory):
    """The session's digits CNN and an MLP trained on the same split, assembled 0.6 / 0.4 into a run folder."""
    runs = tmp_path_factory.mktemp("ens")
    cnn_config = open_run(digits_cnn_run)
    mlp_config = replace(cnn_config, model=replace(cnn_config.model, name="mlp", options={}))
    mlp = train(with_overrides(mlp_config, "train", epochs=2), runs_dir=runs, name="mlp", report=False,
                log=lambda _: None).run_dir  # fmt: skip
    run = runs / "ens"
    shutil.copytree(digits_cnn_run, run)
    for name in (RunFile.BEST, RunFile.LAST, RunFile.METRICS):
        (run / name).unlink()
    config = ensemble.write_ensemble([(digits_cnn_run / RunFile.BEST, 0.6), (mlp / RunFile.BEST, 0.4)], run,
                                     cnn_config, history_from=digits_cnn_run, valid_loss=0.1)  # fmt: skip
    write_run_config(run, config)
    for stale in (RunFile.EVAL, RunFile.PREDICTIONS):
        (run / stale).unlink(missing_ok=True)
    return run, mlp


def test_an_ensemble_run_is_evaluated_predicted_and_exported_as_one_model(ensemble_run, digits_cnn_run, tmp_path):
    run, mlp = ensemble_run
    config = open_run(run)
    assert config.model.name == ENSEMBLE and [m["weight"] for m in config.model.options["members"]] == [0.6, 0.4]
    images = write_digit_folder(tmp_path / "images", classes=tuple(range(10)), per_class=2, size=8)
    files = sorted(images.rglob("*.png"))

    def probs(run_dir):
        _, predictions = predict_images(run_dir / RunFile.BEST, files, backend="torch", log=lambda _: None)
        return torch.tensor(np.stack([p.probabilities for p in predictions]))

    expected = 0.6 * probs(digits_cnn_run) + 0.4 * probs(mlp)
    assert torch.allclose(probs(run), expected, atol=1e-5)
    evaluation = evaluate_run(run, log=lambda _: None)
    assert evaluation["accuracy"] >= 0.85  # two real digit models together
    out = tmp_path / "ensemble.onnx"
    result = E.export_run(run, output=out, log=lambda _: None)
    assert result["passed"] and result["same_argmax"] == 1.0  # one ONNX graph holding both members
    ckpt = load_checkpoint(run / RunFile.BEST)
    model = model_from_checkpoint(ckpt, run / RunFile.BEST)
    assert len(model.members) == 2 and ckpt.preprocessing.mean == (0.0,)


def test_an_ensemble_run_cannot_be_resumed(ensemble_run):
    with pytest.raises(CnnlabError, match="ensemble assembled from finished candidates"):
        resume(ensemble_run[0], log=lambda _: None)


def _complementary(n: int = 200) -> tuple[np.ndarray, list[np.ndarray]]:
    """Two members, each right (0.9) on its own half of `n` images and slightly wrong (0.45) on the other."""
    labels = np.tile([0, 1], n // 2)
    members = []
    for right_on in (np.arange(n) < n // 2, np.arange(n) >= n // 2):
        p_true = np.where(right_on, 0.9, 0.45)
        out = np.zeros((n, 10))
        out[np.arange(n), labels] = p_true
        out[np.arange(n), 1 - labels] = 1 - p_true
        members.append(out)
    return labels, members


def test_the_search_assembles_a_winning_ensemble_into_one_run_and_records_why(ensemble_run, digits_cnn_run):
    from cnnlab.training import auto

    _, mlp = ensemble_run
    labels, probs = _complementary()
    rows = [
        auto.Row("cnn", "scratch", 0.5, config=open_run(digits_cnn_run), valid_probs=probs[0],
                 trained=auto.Trained(digits_cnn_run, [1, 2]), pass_s=0.1),
        auto.Row("mlp", "scratch", 0.5, config=open_run(mlp), valid_probs=probs[1], trained=auto.Trained(mlp, [1, 2]),
                 pass_s=0.1),
    ]  # fmt: skip
    row, verdict = auto._ensemble_row(rows, labels, None, rows[0].config, None, None, time.perf_counter() + 60,
                                      lambda config, splits, least=False: (3.0, 1.0), log=lambda _: None)  # fmt: skip
    assert row is not None and row.family == "ensemble" and row.valid_accuracy == 1.0
    assert row.valid_score < min(evidence.log_loss(p, labels) for p in probs) - row.margin  # log loss, cross-fitted
    assert row.config.model.name == ENSEMBLE and verdict.startswith("ensemble: kept")
    why = auto._decision(row, [*rows, row], verdict, None, len(labels))  # what the search prints and records
    assert why.startswith(f"validation log loss on the same {len(labels)} images, cross-fitted") and verdict in why
    assert [m["weight"] for m in row.config.model.options["members"]] == [0.5, 0.5]
    model = model_from_checkpoint(load_checkpoint(row.trained.folder / RunFile.BEST), row.trained.folder)
    assert len(model.members) == 2
    row.trained.discard()
    # the same evidence, but its evaluation (3 passes of 0.2 s + 1 s) does not fit in the half second left
    said: list[str] = []
    late, verdict = auto._ensemble_row(rows, labels, None, rows[0].config, None, None, time.perf_counter() + 0.5,
                                       lambda config, splits, least=False: (3.0, 1.0), log=said.append)  # fmt: skip
    assert late is None and verdict == said[-1]
    assert "not kept, the budget is spent" in verdict and "about 2 s" in verdict


def test_an_ensemble_run_is_explained_and_reported(ensemble_run):
    """The report of a kept ensemble: explain runs on the one model (its members' features side by side) and the
    page names the ensemble."""
    from cnnlab.pipeline import report_run

    run, _ = ensemble_run
    evaluate_run(run, log=lambda _: None)
    page = report_run(run, explain=True, log=lambda _: None)
    assert (run / RunFile.EXPLAIN / RunFile.EXPLAIN_JSON).is_file()
    assert ENSEMBLE in page.read_text()
