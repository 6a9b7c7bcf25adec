"""Right by default on a user's folder: converged heads, native size, label-safe flips, a batch that takes steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnlab.config import DataConfig, load_config
from cnnlab.data.batches import Normalization
from cnnlab.data.sources import folder_image_size, load_source
from cnnlab.data.splits import make_splits
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.pretrained import backbone_preprocessing, load_pretrained
from cnnlab.predict.features import backbone_features
from cnnlab.training import head as head_module
from cnnlab.training.flips import FlipCheck
from cnnlab.training.head import fit_linear_head
from cnnlab.training.plan import default_batch_size
from cnnlab.training.transfer import SEARCH_ROWS, _search_rows
from helpers import needs_fashion


def _accuracy(out: str) -> float:
    return float(out.split("Test Accuracy (Overall): ")[1].split("%")[0])


def _write_digits(root, size: int | None = None):
    """scikit-learn's 1,797 real digits as PNGs, one folder per class (at 8x8 unless `size`)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray((img * 255 / 16).round().astype(np.uint8))
        (pil.resize((size, size)) if size else pil).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("exact_values", [head_module.EXACT_VALUES, 0])
def test_head_is_at_least_as_accurate_as_sklearn_logistic_regression(tmp_path, monkeypatch, exact_values):
    """Real digits through the offline ImageNet backbone: cnnlab's head vs LogisticRegression, same features; in
    float64, and in float32 as large feature sets are fit, the L2 path stopped once past its minimum."""
    from sklearn.linear_model import LogisticRegression

    monkeypatch.setattr(head_module, "EXACT_VALUES", exact_values)
    source = load_source(DataConfig(source="digits"))
    model = create_model(
        "efficientnet_lite0", num_classes=10, in_channels=1, image_size=8, strategy="feature-extract",
        options={"input_size": 64},
    )  # fmt: skip
    load_pretrained(model)
    prep = backbone_preprocessing("efficientnet_lite0")
    features = model.select_levels(backbone_features(model, source.images, Normalization(prep.mean, prep.std),
                                                     cache_dir=tmp_path)[0])  # fmt: skip
    splits = make_splits(source.labels.numpy(), source.partitions, valid_fraction=0.2, test_fraction=0.2, seed=0)
    x = {s: features[torch.as_tensor(splits[s])] for s in splits}
    y = {s: source.labels[torch.as_tensor(splits[s])] for s in splits}
    head = fit_linear_head(x["train"], y["train"], x["valid"], y["valid"], 10)
    ours = float((head.logits(x["test"]).argmax(1) == y["test"]).double().mean())
    theirs = LogisticRegression(max_iter=5000).fit(x["train"].numpy(), y["train"].numpy())
    baseline = theirs.score(x["test"].numpy(), y["test"].numpy())
    assert ours >= baseline - 0.01, (ours, baseline)
    assert ours > 0.85  # real features of real digits, not chance
    assert len(head.path) > 1 and head.l2 in [p["l2"] for p in head.path]
    best = [p["l2"] for p in head.path].index(head.l2)
    assert len(head.path) - 1 - best <= head_module.PATH_PATIENCE  # stopped past the minimum (or at the grid's end)


def test_digits_folder_trains_like_the_builtin_digits_at_native_size_without_flips(cli, tmp_path):
    folder = _write_digits(tmp_path / "digits")
    runs = tmp_path / "runs"
    code, out, err = cli("train", "--data", f"folder:{folder}", "--model", "simple_cnn_bn", "--runs-dir", runs,
                         "--name", "folder",
                         "--data-root", tmp_path / "data", "--no-report")  # fmt: skip
    assert code == 0, err
    assert "image size: 8 px (native: all 1797 images are 8x8)" in out
    assert "flips: off (after epoch" in out and "change the labels" in out
    saved = yaml.safe_load((runs / "folder" / "config.yaml").read_text())
    assert saved["data"]["image_size"] == 8 and saved["data"]["flips"] is False
    assert "image_size" in saved["decisions"] and "flips" in saved["decisions"]
    code, builtin_out, err = cli("train", "--data", "digits", "--runs-dir", runs, "--name", "builtin", "--no-report")
    assert code == 0, err
    assert abs(_accuracy(out) - _accuracy(builtin_out)) <= 3.0, (_accuracy(out), _accuracy(builtin_out))
    assert _accuracy(out) >= 95.0


def test_folder_size_rule(tmp_path):
    def folder(name, sizes):
        files = []
        for i, (w, h) in enumerate(sizes):
            path = tmp_path / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (w, h)).save(path)
            files.append(("train", path, 0))
        return files

    assert folder_image_size(folder("same", [(28, 28)] * 3), tmp_path)[0] == 28
    assert folder_image_size(folder("wide", [(40, 30)] * 2), tmp_path)[0] == 30  # the shorter side
    size, why = folder_image_size(folder("big", [(256, 256)] * 2), tmp_path)
    assert size == 64 and "above 96 px" in why
    size, why = folder_image_size(folder("mixed", [(30, 40), (50, 50), (100, 80), (20, 20)]), tmp_path)
    assert size == 30 and "median" in why  # the (lower) median shorter side of 20, 30, 50, 80
    size, _ = folder_image_size(folder("mixed-large", [(300, 200), (500, 400), (640, 480)]), tmp_path)
    assert size == 64


def test_small_train_splits_get_a_batch_that_takes_steps():
    batch, why = default_batch_size(120)
    assert batch == 16 and "about 7 steps per epoch instead of 1 at 128" in why
    assert default_batch_size(500)[0] == 32
    assert default_batch_size(48_000) == (128, None)


def test_an_explicit_batch_size_is_kept(cli, tmp_path):
    folder = _write_digits(tmp_path / "digits")
    code, out, err = cli("train", "--data", f"folder:{folder}", "--batch-size", "64", "--epochs", "1",
                         "--dry-run", "--data-root", tmp_path / "data")  # fmt: skip
    assert code == 0, err
    assert "batch 64" in out and "batch size:" not in out


@pytest.mark.slow
@needs_fashion
def test_fashion_folder_turns_flips_on_and_matches_the_builtin_dataset(cli, tmp_path):
    """10,000 real Fashion-MNIST training images + the official test set as PNGs vs the same images in memory."""
    source = load_source(DataConfig(source="fashion-mnist"))
    names = [c.replace("/", "-") for c in source.class_names]
    for part, idx in (("train", source.partitions["train"][:10_000]), ("test", source.partitions["test"])):
        for i in idx:
            path = tmp_path / "fashion" / part / names[int(source.labels[i])] / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(source.images[i, 0].numpy()).save(path)
    common = ("--model", "simple_cnn_bn", "--epochs", "4", "--runs-dir", tmp_path / "runs", "--no-report")
    code, out, err = cli("train", "--data", f"folder:{tmp_path / 'fashion'}", "--name", "folder",
                         "--data-root", tmp_path / "data", *common)  # fmt: skip
    assert code == 0, err
    assert "image size: 28 px (native" in out and "flips: on (after epoch" in out
    code, builtin_out, err = cli("train", "--data", "fashion-mnist", "--train-limit", "8000", "--name", "builtin",
                                 *common)  # fmt: skip
    assert code == 0, err
    assert abs(_accuracy(out) - _accuracy(builtin_out)) <= 1.5, (_accuracy(out), _accuracy(builtin_out))


def test_flip_rule_waits_for_a_model_better_than_chance_then_decides_once():
    recorded = []
    check = FlipCheck(10, record=lambda flips, why: recorded.append((flips, why)))
    assert not check.ready(0.40)  # halfway from chance (0.1) to 1 is 0.55
    assert check.ready(0.90)
    assert check.decide(2, 0.90, 0.40) is False  # mirroring costs 56%: digits-like
    assert recorded[0][0] is False and "after epoch 2" in recorded[0][1] and not check.ready(0.95)
    assert FlipCheck(10, record=lambda *_: None).decide(3, 0.90, 0.75) is True  # 17%: fashion-like


def test_config_decisions_must_be_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("decisions: [1, 2]\n")
    with pytest.raises(CnnlabError, match="'decisions' must be a mapping"):
        load_config(path)
    path.write_text("decisions: {flips: measured}\n")
    assert load_config(path).decisions == {"flips": "measured"}


def test_frozen_candidates_are_ranked_on_a_stratified_sample_of_a_large_train_split():
    """Above SEARCH_ROWS training images the candidates' heads are fit on a seeded sample that keeps every class's
    share (a class of 1% keeps its 1%); at or below it, on all of them."""
    labels = torch.tensor([0] * 9000 + [1] * 2880 + [2] * 120)
    rows = _search_rows(labels, seed=0)
    counts = torch.bincount(labels[rows]).tolist()
    assert abs(sum(counts) - SEARCH_ROWS) <= 2 and counts == [round(SEARCH_ROWS * n / 12000) for n in (9000, 2880, 120)]
    assert torch.equal(rows, _search_rows(labels, seed=0)) and not torch.equal(rows, _search_rows(labels, seed=1))
    assert _search_rows(labels[:SEARCH_ROWS], seed=0) is None


def test_the_same_seed_builds_the_same_head_whether_or_not_the_preprocessing_was_looked_up():
    """Looking up a backbone's preprocessing builds a timm model once per process; it must not draw from the
    global RNG, or a seeded run's head (and so its result) would depend on what ran before it in the process."""

    def seeded_head() -> torch.Tensor:
        torch.manual_seed(0)
        return create_model("efficientnet_lite0", num_classes=3, image_size=64).head.weight.detach().clone()

    with torch.random.fork_rng(devices=[]):
        backbone_preprocessing.cache_clear()
        first = seeded_head()  # looks the preprocessing up inside the build
        assert torch.equal(first, seeded_head())  # found in the cache this time
