"""The streamed path (`--stream`): folders decoded batch by batch give what the in-memory path gives."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from cnnlab.config import DataConfig
from cnnlab.data.batches import Normalization
from cnnlab.data.cache import tensor_digest
from cnnlab.data.images import decode_files, decoded_chunks
from cnnlab.data.lazy import ImageRows, LazyImages, row_view, select
from cnnlab.data.samples import write_sample_folder
from cnnlab.data.sources import load_source


@pytest.fixture(scope="module")
def lfw(tmp_path_factory):
    root = tmp_path_factory.mktemp("lfw") / "lfw"
    write_sample_folder("lfw", root)
    return root


def test_streamed_images_equal_the_in_memory_ones(lfw, tmp_path):
    memory = load_source(DataConfig(source=f"folder:{lfw}", root=str(tmp_path), image_size=32))
    stream = load_source(DataConfig(source=f"folder:{lfw}", root=str(tmp_path), image_size=32, stream=True))
    assert isinstance(stream.images, LazyImages) and stream.images.shape == tuple(memory.images.shape)
    assert stream.ids == memory.ids and torch.equal(stream.labels, memory.labels)
    idx = torch.tensor([5, 0, 150])
    assert torch.equal(stream.images[idx], memory.images[idx]) and torch.equal(stream.images[3:7], memory.images[3:7])
    train = memory.partitions["train"]
    assert Normalization.from_images(select(stream.images, train)) == Normalization.from_images(memory.images[train])


def test_a_row_view_cuts_the_batches_and_keeps_the_cache_key_of_the_copy(lfw, tmp_path):
    """The frozen head's feature pass reads its split through a view, not a copy; the features cached from a
    copy must still be found."""
    images = load_source(DataConfig(source=f"folder:{lfw}", root=str(tmp_path), image_size=32)).images
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:130]
    view, copy = row_view(images, idx), images[idx]
    assert isinstance(view, ImageRows) and view.shape == tuple(copy.shape) and len(view) == 130
    assert torch.equal(view[100:130], copy[100:130]) and torch.equal(view[7], copy[7])
    assert tensor_digest(view) == tensor_digest(copy) != tensor_digest(images[idx[:129]])


def test_streamed_and_in_memory_training_agree(cli, lfw, tmp_path):
    results = {}
    for mode in ("in-memory", "stream"):
        code, out, err = cli(
            "train", "--data", f"folder:{lfw}", "--model", "simple_cnn_bn", "--epochs", "3", f"--{mode}",
            "--runs-dir", tmp_path,
            "--name", mode, "--data-root", tmp_path / "data", "--no-report", "--image-size", "32",
        )  # fmt: skip
        assert code == 0, err
        with (tmp_path / mode / "metrics.csv").open() as fh:
            losses = [float(r["train_loss"]) for r in csv.DictReader(fh)]
        results[mode] = (losses, float(out.split("Test Accuracy (Overall): ")[1].split("%")[0]))
    (mem_losses, mem_acc), (str_losses, str_acc) = results["in-memory"], results["stream"]
    assert mem_losses == pytest.approx(str_losses, rel=1e-3)  # same seed, same batches, same decode
    assert abs(mem_acc - str_acc) <= 2.5


def test_streamed_path_skips_a_corrupt_file_with_a_warning(lfw, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(lfw, copy)
    bad = sorted((copy / "train" / "face").iterdir())[0]
    bad.write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        source = load_source(DataConfig(source=f"folder:{copy}", root=str(tmp_path), stream=True))
    assert str(bad) not in source.ids and len(source.images) == 199


def test_predicting_in_chunks_gives_the_whole_array_and_one_warning(lfw, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in sorted(lfw.rglob("*.png"))[:7]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    whole, kept = decode_files([folder], size=16, channels=3, crop_pct=1.0)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        chunks = list(decoded_chunks([folder], size=16, channels=3, crop_pct=1.0, chunk=3))
    assert len(chunks) == 3 and max(len(c) for c, _ in chunks) <= 3 and sum(len(c) for c, _ in chunks) == 7
    assert np.array_equal(np.concatenate([c for c, _ in chunks]), whole) and [p for _, k in chunks for p in k] == kept
