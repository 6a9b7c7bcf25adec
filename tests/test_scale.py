"""A budget that knows the data (training/scale.py, data/identity.py `sampled`): a folder too large for one pass
within the budget is sampled by file, said and recorded with the budget that would take it all; a sample is the same
files on every command and keeps them as the folder grows, so a run is evaluated on exactly its own test files; a
frozen head's regularisation path stops at its share of the budget."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from cnnlab.config import DataConfig, RunConfig, with_overrides
from cnnlab.data.identity import SAMPLE_LEAST
from cnnlab.data.sources import load_source
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.evaluate import evaluate_run
from cnnlab.pipeline import train
from cnnlab.runs import RunFile
from cnnlab.training import scale
from cnnlab.training.head import fit_linear_head
from cnnlab.training.plan import check_request
from helpers import write_digit_folder


def _folder(path: Path, root: Path, **train) -> RunConfig:
    cfg = with_overrides(RunConfig(), "data", source=f"folder:{path}", root=str(root))
    return with_overrides(cfg, "train", **train) if train else cfg


def test_a_folder_too_large_for_the_budget_is_sampled_and_says_what_budget_takes_it_all(tmp_path, monkeypatch):
    folder = write_digit_folder(tmp_path / "digits", per_class=40)  # 120 files
    monkeypatch.setattr(scale, "PROBE_FROM", 10)
    monkeypatch.setattr(scale, "image_seconds", lambda *a, **k: (0.02, 0.03, 0.1))  # as if measured
    lines: list[str] = []
    tight = check_request(_folder(folder, tmp_path / "root", budget_minutes=0.05), log=lines.append)
    # 3 s of budget, PASS_SHARE of it for decoding (20 ms) and passes (30 ms) of each image, its scored splits'
    # passes (valid 16% and test 20% of the images, twice each) too: 1.8 s / 71.6 ms = 25 of the 120 images fit
    assert tight.data.sample == pytest.approx(25 / 120, rel=1e-3)
    assert "would use them all" in tight.decisions["sample"]
    assert any(line.startswith("data: decoding and scoring all 120 images") for line in lines)
    # explaining kept back first: 10 images in eager PyTorch (100 ms each) and 0.5 s: 0.9 s left for 12 images
    explained = check_request(_folder(folder, tmp_path / "root", budget_minutes=0.05), log=lambda _: None,
                              kept=(10, 0.5))  # fmt: skip
    assert explained.data.sample == pytest.approx(12 / 120, rel=1e-3)
    roomy = check_request(_folder(folder, tmp_path / "root", budget_minutes=1.0), log=lambda _: None)
    assert roomy.data.sample is None and "sample" not in roomy.decisions
    chosen = with_overrides(_folder(folder, tmp_path / "root", budget_minutes=0.05), "data", sample=1.0)
    assert check_request(chosen, log=lambda _: None).data.sample == 1.0  # the user's share stands


def test_a_sample_is_the_same_files_every_time_and_keeps_them_as_the_folder_grows(tmp_path):
    folder = write_digit_folder(tmp_path / "digits", per_class=60)
    data = DataConfig(source=f"folder:{folder}", root=str(tmp_path / "root"), sample=0.25)
    first = load_source(data)
    assert first.keys == load_source(data).keys
    assert 20 <= len(first.keys) <= 80  # about 45 of 180, by hash
    assert all(int((first.labels == c).sum()) >= SAMPLE_LEAST for c in range(3))
    write_digit_folder(tmp_path / "digits", per_class=120)  # 60 more files per class
    grown = load_source(data)
    assert set(first.keys) <= set(grown.keys) and len(grown.keys) > len(first.keys)


def test_a_run_on_a_sample_is_evaluated_on_its_own_test_files_after_the_folder_grows(tmp_path):
    folder = write_digit_folder(tmp_path / "digits", per_class=60)
    cfg = with_overrides(_folder(folder, tmp_path / "root", epochs=3), "data", sample=0.5)
    cfg = with_overrides(cfg, "model", name="mlp")
    result = train(cfg, runs_dir=tmp_path / "runs", name="r", report=False, log=lambda _: None)
    tested = json.loads((result.run_dir / RunFile.SPLITS).read_text())
    write_digit_folder(tmp_path / "digits", per_class=120)
    again = evaluate_run(result.run_dir, log=lambda _: None)
    assert again["accuracy"] == pytest.approx(result.evaluation["accuracy"])
    assert again["n_test"] == result.evaluation["n_test"] == len(tested["test"])


def test_a_share_outside_zero_to_one_is_one_clear_error():
    with pytest.raises(CnnlabError, match=r"sample must be a share of the folder's files in \(0, 1\]"):
        DataConfig(source="folder:x", sample=1.5)


def test_a_head_whose_budget_share_is_spent_stops_its_regularisation_path_after_one_strength():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 20, generator=gen)
    y = (x[:, 0] + 0.5 * torch.randn(300, generator=gen) > 0).long()
    full = fit_linear_head(x[:200], y[:200], x[200:], y[200:], 2)
    spent = fit_linear_head(x[:200], y[:200], x[200:], y[200:], 2, deadline=time.perf_counter() - 1)
    assert len(full.path) > 1 and len(spent.path) == 1
    assert spent.out_of_time and "stopped at its share of the budget" in spent.describe()


def test_the_probe_times_real_files_and_steps_over_a_broken_one(tmp_path):
    """The plan's measurement on real files (no stand-in): decoding as the cache fill does, the backbone's pass on
    the backend the feature pass would use, and in eager PyTorch; an unreadable file among the probed ones is
    skipped, as loading the folder skips it."""
    folder = write_digit_folder(tmp_path / "digits", classes=(0, 1), per_class=6, size=112, mode="RGB")
    (folder / "digit0" / "broken.png").write_bytes(b"not a png")
    files = sorted(folder.rglob("*.png"))
    decode_s, forward_s, eager_s = scale.image_seconds(folder, files, "efficientnet_lite0", size=224, crop_pct=0.875,
                                                       cache_dir=tmp_path / "cache")  # fmt: skip
    assert decode_s > 0 and forward_s > 0 and eager_s > 0
