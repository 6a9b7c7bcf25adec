"""Degenerate images (blank, striped, flat, blurred) are found among real photos, named in the audit's headline,
warned about by `cnnlab train`, and dropped from every split with --drop-degenerate (which the run records)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from cnnlab.audit.degenerate import degenerate_reasons
from helpers import write_digit_folder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "coins", "camera", "immunohistochemistry", "retina", "grass",
          "clock", "text", "page", "moon", "cat", "hubble_deep_field", "microaneurysms")  # fmt: skip


def _real_photos(size: int = 128) -> list[np.ndarray]:
    """scikit-image's bundled real photographs, as RGB uint8 [size, size, 3]."""
    from skimage import data

    out = []
    for name in PHOTOS:
        image = Image.fromarray(np.asarray(getattr(data, name)()).astype(np.uint8)).convert("RGB")
        out.append(np.asarray(image.resize((size, size), Image.Resampling.BICUBIC)))
    return out


def _planted(photo: np.ndarray, kind: str) -> np.ndarray:
    """A degenerate copy of a real photo, made as they arise: a row or column stretched across (a failed resize),
    a constant frame, a heavy blur, the photo shrunk into black padding."""
    size = photo.shape[0]
    if kind == "row":
        return np.repeat(photo[size // 3][None], size, 0)
    if kind == "column":
        return np.repeat(photo[:, size // 2][:, None], size, 1)
    if kind == "blank":
        return np.full_like(photo, 117)
    if kind == "blur":
        return np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(size / 28)))
    framed = np.zeros_like(photo)
    framed[size // 2 - 10 : size // 2 + 10, size // 2 - 10 : size // 2 + 10] = photo[::6, ::6][:20, :20]
    return framed


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def test_planted_degenerate_images_are_found_and_no_real_photo_is():
    photos = _real_photos()
    kinds = ("row", "column", "blank", "blur", "frame")
    planted = [_planted(photos[i], kind) for i, kind in enumerate(kinds)]
    found = degenerate_reasons(_tensor(photos + planted))
    assert sorted(found) == list(range(len(photos), len(photos) + len(kinds)))  # the planted ones, nothing else
    reasons = [found[len(photos) + i][0] for i in range(len(kinds))]
    assert [r.split(":")[0] for r in reasons] == ["stripes", "stripes", "blank", "blurred", "flat"]
    assert "every row the same" in reasons[0] and "every column the same" in reasons[1]


@pytest.mark.skipif(not (SHARED / "blood-cells").is_dir(), reason="../shared/data absent")
def test_no_photo_of_the_shared_folders_is_called_degenerate():
    from cnnlab.config import DataConfig
    from cnnlab.data.sources import load_source

    for name in ("caltech12", "blood-cells"):
        source = load_source(DataConfig(source=f"folder:{SHARED / name}", image_size=160))
        assert degenerate_reasons(source.images) == {}, name


def test_train_warns_and_drop_degenerate_leaves_them_out_of_every_split(cli, tmp_path):
    folder = write_digit_folder(tmp_path / "digits", classes=(0, 1), per_class=30, size=32, mode="RGB")
    for i, kind in enumerate(("blank", "row", "blank", "column")):
        photo = np.asarray(Image.open(next((folder / "digit0").glob("*.png"))).convert("RGB"))
        Image.fromarray(_planted(photo, kind)).save(folder / f"digit{i % 2}" / f"broken{i}.png")
    runs = tmp_path / "runs"
    args = ("train", "--data", f"folder:{folder}", "--model", "simple_cnn_bn", "--epochs", "1", "--runs-dir", runs,
            "--data-root", tmp_path / "d", "--no-report")  # fmt: skip
    code, out, err = cli(*args, "--name", "kept")
    assert code == 0, err
    assert "warning: 4 degenerate image(s) (blank 2, stripes 2)" in out and "--drop-degenerate drops them" in out
    code, out, err = cli(*args, "--name", "dropped", "--drop-degenerate")
    assert code == 0, err
    assert "dropped (--drop-degenerate)" in out
    saved = json.loads((runs / "dropped" / "splits.json").read_text())
    left_out = sorted(i for ids in saved["degenerate"].values() for i in ids)
    kept = {i for split in ("train", "valid", "test") for i in saved[split]}
    assert len(left_out) == 4 and not kept & set(left_out) and len(kept) == 60
    audit = json.loads((runs / "dropped" / "audit.json").read_text())
    assert audit["counts"]["degenerate"] == 4 and all(
        r["reason"] for r in audit["findings"] if r["issue"] == "degenerate"
    )
    assert json.loads((runs / "dropped" / "eval.json").read_text())["n_test"] == len(saved["test"])


def test_drop_degenerate_that_would_empty_a_split_is_one_clear_line(cli, tmp_path):
    """A folder of nothing but blank frames: --drop-degenerate would leave nothing to train on; one error line,
    no run folder."""
    for c in range(2):
        (tmp_path / "blank" / f"class{c}").mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (32, 32), (40 * c + i, 90, 90)).save(tmp_path / "blank" / f"class{c}" / f"{i}.png")
    runs = tmp_path / "runs"
    code, _, err = cli("train", "--data", f"folder:{tmp_path / 'blank'}", "--model", "simple_cnn_bn", "--epochs",
                       "1", "--drop-degenerate", "--runs-dir", runs, "--data-root", tmp_path / "d")  # fmt: skip
    assert code == 2 and "--drop-degenerate would leave the train split empty" in err
    assert len(err.strip().splitlines()) == 1 and not (runs.exists() and any(runs.iterdir()))
