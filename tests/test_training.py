"""Models trained on real data reach stated accuracies; resume equals an uninterrupted run."""

import csv
import signal
import subprocess
import sys
import time

import pytest
import torch

from cnnlab.config import RunConfig, with_overrides
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.pipeline import resume, train
from helpers import needs_fashion


def _cfg(source, model, epochs, **train_kw):
    cfg = with_overrides(RunConfig(), "data", source=source)
    cfg = with_overrides(cfg, "model", name=model)
    return with_overrides(cfg, "train", epochs=epochs, **train_kw)


def _quiet(_):
    pass


def test_mlp_on_digits_beats_90_percent(tmp_path):
    result = train(_cfg("digits", "mlp", 10), runs_dir=tmp_path, name="m", log=_quiet, report=False)
    assert result.evaluation["accuracy"] >= 0.90


@pytest.mark.slow
@needs_fashion
def test_default_model_reaches_88_percent_on_fashion_mnist_in_two_epochs(tmp_path):
    result = train(_cfg("fashion-mnist", "simple_cnn_bn", 2), runs_dir=tmp_path, name="d", log=_quiet, report=False)
    assert result.evaluation["n_test"] == 10000
    assert result.evaluation["accuracy"] >= 0.88


@pytest.mark.slow
@needs_fashion
@pytest.mark.parametrize("model", ["simple_cnn", "mlp"])
def test_course_models_clearly_learn_fashion_mnist(tmp_path, model):
    result = train(_cfg("fashion-mnist", model, 2), runs_dir=tmp_path, name=model, log=_quiet, report=False)
    assert result.evaluation["accuracy"] >= 0.80


def _metric_rows(run_dir):
    with (run_dir / "metrics.csv").open() as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def test_resume_equals_uninterrupted_run(tmp_path):
    # dropout, batch norm and augmentation all draw random numbers: the strictest case
    cfg = _cfg("digits", "simple_cnn_bn", 4)
    full = train(cfg, runs_dir=tmp_path, name="full", log=_quiet, report=False).run_dir

    def stop_after_epoch_2(line):
        if line.startswith("epoch   2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, runs_dir=tmp_path, name="cut", log=stop_after_epoch_2, report=False)
    cut = tmp_path / "cut"
    assert load_checkpoint(cut / "last.pt")["epoch"] == 2 and len(_metric_rows(cut)) == 2
    resume(cut, log=_quiet)
    assert _metric_rows(cut) == _metric_rows(full)
    a, b = load_checkpoint(full / "best.pt")["model"], load_checkpoint(cut / "best.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_leaves_a_loadable_last_checkpoint(tmp_path):
    cmd = [sys.executable, "-m", "cnnlab.cli", "train", "--data", "digits", "--model", "mlp", "--epochs", "500",
           "--runs-dir", str(tmp_path), "--name", "long"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "long" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.startswith("error: interrupted in epoch") and "cnnlab train --resume" in err
    ckpt = load_checkpoint(last)
    assert 1 <= ckpt["epoch"] < 500
