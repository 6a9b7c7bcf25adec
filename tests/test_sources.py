import gzip
import warnings

import numpy as np
import pytest
import torch

from cnnlab.config import DataConfig
from cnnlab.data.idx import read_idx
from cnnlab.data.sources import load_source
from cnnlab.errors import CnnlabError
from helpers import needs_fashion, write_digit_folder


def test_digits_source_is_real_and_scaled_to_uint8():
    src = load_source(DataConfig(source="digits"))
    assert src.images.shape == (1797, 1, 8, 8) and src.images.dtype == torch.uint8
    assert src.images.max() == 255 and not src.flip_invariant
    assert np.bincount(src.labels.numpy()).min() >= 170


@needs_fashion
def test_fashion_mnist_reads_official_train_and_test():
    src = load_source(DataConfig(source="fashion-mnist"))
    assert src.images.shape == (70000, 1, 28, 28)
    assert len(src.partitions["train"]) == 60000 and len(src.partitions["test"]) == 10000
    assert src.class_names[7] == "Sneaker" and src.ids[60000] == "test/0"
    assert np.bincount(src.labels[src.partitions["test"]].numpy()).tolist() == [1000] * 10


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_gzipped_or_not(tmp_path, gz):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 0x08, 3]) + b"".join(int(d).to_bytes(4, "big") for d in data.shape) + data.tobytes()
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    assert np.array_equal(read_idx(path), data)


def test_idx_reader_rejects_truncated_file(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big") + b"abc")
    with pytest.raises(CnnlabError, match="truncated"):
        read_idx(path)


def test_folder_source_grey_images_keep_one_channel(tmp_path):
    write_digit_folder(tmp_path, per_class=5)
    src = load_source(DataConfig(source=f"folder:{tmp_path}", image_size=16))
    assert src.images.shape == (15, 1, 16, 16)
    assert src.class_names == ["digit0", "digit1", "digit2"]
    assert src.ids[0].endswith("digit0/000.png")


def test_folder_source_rgb_and_split_subfolders(tmp_path):
    for part in ("train", "valid", "test"):
        write_digit_folder(tmp_path / part, per_class=4, mode="RGB")
    src = load_source(DataConfig(source=f"folder:{tmp_path}", image_size=20))
    assert src.images.shape == (36, 3, 20, 20)
    assert {k: len(v) for k, v in src.partitions.items()} == {"train": 12, "valid": 12, "test": 12}


def test_folder_source_skips_corrupt_files_with_a_count(tmp_path):
    write_digit_folder(tmp_path, per_class=5)
    (tmp_path / "digit1" / "empty.png").write_bytes(b"")
    (tmp_path / "digit2" / "junk.jpg").write_bytes(b"not a jpeg at all")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src = load_source(DataConfig(source=f"folder:{tmp_path}", image_size=16))
    assert len(src.skipped) == 2 and len(src.labels) == 15
    assert "skipped 2 unreadable image(s)" in str(caught[0].message)
    with pytest.raises(CnnlabError, match="unreadable image .*empty.png: empty file"):
        load_source(DataConfig(source=f"folder:{tmp_path}", image_size=16, strict=True))


def test_the_val_layout_of_torchvision_and_the_transfer_tutorial_is_the_validation_split(tmp_path):
    """train/ + val/ (or validation/) + testing/: each folder is the split it names; nothing is silently ignored."""
    write_digit_folder(tmp_path / "f" / "train", classes=(0, 1), per_class=20, size=8)
    write_digit_folder(tmp_path / "f" / "val", classes=(0, 1), per_class=6, size=8)
    write_digit_folder(tmp_path / "f" / "testing", classes=(0, 1), per_class=5, size=8)
    src = load_source(DataConfig(source=f"folder:{tmp_path / 'f'}", root=str(tmp_path / "cache")))
    assert {k: len(v) for k, v in src.partitions.items()} == {"train": 40, "valid": 12, "test": 10}
    assert all("/val/" in src.ids[i] for i in src.partitions["valid"])


def test_a_stray_folder_and_an_unknown_class_are_named(tmp_path):
    write_digit_folder(tmp_path / "f" / "train", classes=(0, 1), per_class=10, size=8)
    write_digit_folder(tmp_path / "f" / "validation", classes=(0, 1, 2), per_class=4, size=8)
    write_digit_folder(tmp_path / "f" / "extra", classes=(0,), per_class=3, size=8)
    with pytest.warns(UserWarning) as caught:
        src = load_source(DataConfig(source=f"folder:{tmp_path / 'f'}", root=str(tmp_path / "cache")))
    text = " ".join(str(w.message) for w in caught)
    assert "extra/ beside train/ are not used" in text and "class folder(s) digit2 that train/ lacks" in text
    assert len(src.partitions["valid"]) == 8  # digit2's images are left out, the others used


def test_two_names_for_one_split_is_an_error(tmp_path):
    for split in ("train", "val", "valid"):
        write_digit_folder(tmp_path / "f" / split, classes=(0, 1), per_class=3, size=8)
    with pytest.raises(CnnlabError, match="both valid/ and val/"):
        load_source(DataConfig(source=f"folder:{tmp_path / 'f'}", root=str(tmp_path / "cache")))
