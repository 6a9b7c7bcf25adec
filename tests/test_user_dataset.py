"""A user's own torch Dataset through the Python API: trained, evaluated and predicted like a folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset
from torchvision.datasets import ImageFolder

from cnnlab.config import RunConfig, with_overrides
from cnnlab.data.samples import write_sample_folder
from cnnlab.data.user_dataset import register_dataset
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.evaluate import evaluate_run
from cnnlab.pipeline import train
from cnnlab.predict.infer import predict_dataset


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """The bundled 200-image face / non-face sample wrapped by hand: torchvision's ImageFolder over each of its split
    folders, joined by a ConcatDataset (PIL images; no `targets`, so the labels take one pass)."""
    root = tmp_path_factory.mktemp("lfw") / "lfw"
    write_sample_folder("lfw", root)
    parts = [ImageFolder(str(root / split)) for split in ("train", "valid", "test")]
    joined = ConcatDataset(parts)
    joined.classes = parts[0].classes
    return joined


def _config(source: str, tmp_path, **data) -> RunConfig:
    cfg = with_overrides(RunConfig(), "data", source=source, root=str(tmp_path / "data"), image_size=32, **data)
    cfg = with_overrides(cfg, "model", name="simple_cnn_bn")
    return with_overrides(cfg, "train", epochs=4, precision="32-true")


@pytest.mark.parametrize("stream", [False, True])
def test_a_user_dataset_trains_evaluates_and_predicts(faces, tmp_path, stream):
    """Held in memory or streamed through DataLoader workers, the same decisions (splits, batch size, flips) are made
    and the model beats 70% on held-out faces (chance: 50%); evaluation and prediction read the Dataset again."""
    source = register_dataset(faces, faces.classes, name="faces")
    lines: list[str] = []
    result = train(_config(source, tmp_path, stream=stream), runs_dir=tmp_path / "runs", name="f", log=lines.append,
                   report=False)  # fmt: skip
    assert result.evaluation["accuracy"] >= 0.70, lines
    assert any(line.startswith("batch size:") for line in lines) and any("flips:" in line for line in lines)
    again = evaluate_run(result.run_dir, log=lambda _: None)
    assert again["accuracy"] == pytest.approx(result.evaluation["accuracy"])
    classes, probs = predict_dataset(result.run_dir, faces)
    assert classes == faces.classes and probs.shape == (len(faces), 2)
    labels = np.asarray([label for part in faces.datasets for label in part.targets])
    assert (probs.argmax(1) == labels).mean() >= 0.70  # 60% training images: at least the held-out accuracy


def test_a_dataset_with_labels_beyond_its_class_names_is_one_clear_error(faces, tmp_path):
    source = register_dataset(faces, ["only", "two"][:2], name="short")
    bad = [(torch.zeros(3, 8, 8), 5)] * 10
    source = register_dataset(bad, ["a", "b"], name="bad")
    with pytest.raises(CnnlabError, match="labels 5..5 for 2 class names"):
        train(_config(source, tmp_path), runs_dir=tmp_path / "runs", log=lambda _: None, report=False)
    with pytest.raises(CnnlabError, match="no Dataset is registered as 'gone'"):
        train(_config("dataset:gone", tmp_path), runs_dir=tmp_path / "runs", log=lambda _: None, report=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_dataset_that_is_not_map_style_or_holds_no_images_is_one_clear_error(tmp_path):
    with pytest.raises(CnnlabError, match="not a map-style Dataset"):
        register_dataset(iter([]), ["a", "b"])
    with pytest.raises(CnnlabError, match="at least two class names"):
        register_dataset([(torch.zeros(3, 8, 8), 0)], ["a"])
    source = register_dataset([("not an image", 0), ("neither", 1)] * 5, ["a", "b"], name="strings")
    with pytest.raises(CnnlabError, match="item's image is a str"):
        train(_config(source, tmp_path), runs_dir=tmp_path / "runs", log=lambda _: None, report=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
