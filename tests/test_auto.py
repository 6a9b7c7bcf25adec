"""`--model auto`, the default for folders: the photo folders of ../shared/data get the pretrained backbone, many
small grey images the from-scratch CNN, few small images a measured choice; a named model is kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.config import RunConfig, with_overrides
from cnnlab.data.idx import read_idx
from cnnlab.pipeline import train
from cnnlab.runs import open_run
from cnnlab.train.plan import check_request
from helpers import FASHION_DIR, needs_fashion, write_digit_folder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_photos = pytest.mark.skipif(not (SHARED / "caltech12").is_dir(), reason="../shared/data photo folders absent")


def _folder(path: Path, root: Path, **model) -> RunConfig:
    cfg = with_overrides(RunConfig(), "data", source=f"folder:{path}", root=str(root))
    return with_overrides(cfg, "model", **model)


@needs_photos
def test_a_photo_folder_gets_the_pretrained_backbone_and_a_named_model_is_kept(tmp_path):
    cfg = check_request(_folder(SHARED / "caltech12", tmp_path), log=lambda _: None)
    assert cfg.model.name == "efficientnet_lite0" and "photos" in cfg.decisions["model"]
    assert cfg.data.image_size == 224  # decoded as the backbone was trained, not at the scratch CNN's 64 px
    kept = check_request(_folder(SHARED / "caltech12", tmp_path, name="mlp"), log=lambda _: None)
    assert kept.model.name == "mlp" and "model" not in kept.decisions


def test_a_named_dataset_keeps_the_course_cnn():
    assert check_request(RunConfig(), log=lambda _: None).model.name == "simple_cnn_bn"  # `make demo` unchanged


@needs_fashion
def test_many_small_grey_images_get_the_from_scratch_cnn(tmp_path):
    images = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    for cls in (0, 1):
        (tmp_path / "f" / str(cls)).mkdir(parents=True)
        for i in np.flatnonzero(labels == cls)[:1000]:
            Image.fromarray(images[i]).save(tmp_path / "f" / str(cls) / f"{i}.png")
    cfg = check_request(_folder(tmp_path / "f", tmp_path / "root"), log=lambda _: None)
    assert cfg.model.name == "simple_cnn_bn" and "1000 small images per class" in cfg.decisions["model"]


def test_few_small_images_are_measured_both_ways_and_the_better_kept(tmp_path):
    """Real 8-px digits, 40 per class: the from-scratch CNN and the backbone's frozen features are both scored on
    validation; the table and the reason are in config.yaml, and the kept model is the better (ties: scratch)."""
    folder = write_digit_folder(tmp_path / "digits", classes=(0, 1, 7), per_class=40, size=8)
    lines = []
    result = train(_folder(folder, tmp_path / "root"), runs_dir=tmp_path / "runs", name="auto", report=False,
                   log=lines.append)  # fmt: skip
    saved = open_run(result.run_dir)
    rows = saved.model.strategy_candidates
    scratch, frozen = rows[0]["valid_accuracy"], rows[1]["valid_accuracy"]
    assert rows[0]["candidate"].startswith("simple_cnn_bn") and rows[1]["candidate"].startswith("efficientnet_lite0")
    expected = "efficientnet_lite0" if frozen > scratch + 0.005 else "simple_cnn_bn"
    assert saved.model.name == expected and "measured on" in saved.decisions["model"]
    assert any("<- chosen" in line for line in lines) and result.evaluation["accuracy"] > 0.9


def test_a_dry_run_does_not_measure_and_takes_the_scratch_cnn(tmp_path):
    folder = write_digit_folder(tmp_path / "digits", classes=(0, 1), per_class=20, size=8)
    lines = []
    train(_folder(folder, tmp_path / "root"), dry_run=True, log=lines.append)
    assert any("not measured (dry run)" in line for line in lines)


@pytest.mark.slow
@needs_photos
def test_the_default_on_a_real_photo_folder_beats_the_old_scratch_default(tmp_path):
    """Caltech-101, 12 classes x 80 photos, default flags: the old from-scratch default scored about 62% on such
    folders; the frozen backbone's head scores above 90% on the test split (measured 99.5%)."""
    result = train(_folder(SHARED / "caltech12", tmp_path / "root"), runs_dir=tmp_path / "runs", name="c",
                   report=False, log=lambda _: None)  # fmt: skip
    assert open_run(result.run_dir).model.name == "efficientnet_lite0" and result.evaluation["accuracy"] > 0.9
