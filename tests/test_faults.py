"""Faults a laptop lid or an out-of-memory killer causes: kill -9 at seeded random moments and --resume gives
bit-identical weights and each epoch once in metrics.csv; a full disk while saving keeps the previous
checkpoints loadable and is one clear line; a run folder moved elsewhere still evaluates and predicts; two
runs started on one name do not corrupt each other."""

from __future__ import annotations

import csv
import errno
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.models.checkpoint import load_checkpoint

EPOCHS = 3
KILLS = 5


def _cnnlab(*args) -> list[str]:
    return [sys.executable, "-c", "import sys; from cnnlab.cli import main; main(sys.argv[1:])", *map(str, args)]


def _train_args(runs: Path, name: str) -> list[str]:
    return _cnnlab("train", "--data", "digits", "--model", "cnn", "--epochs", EPOCHS, "--runs-dir", runs,
                   "--name", name, "--no-report", "--seed", "0", "--data-root", runs.parent / "data")  # fmt: skip


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).weights


def _epochs(run: Path) -> list[int]:
    with (run / "metrics.csv").open(newline="") as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


def _scores(run: Path) -> dict:
    """eval.json without what depends on the moment (the backend's measured speed) or the folder's path."""
    import json

    found = json.loads((run / "eval.json").read_text())
    return {k: v for k, v in found.items() if k not in ("backend", "checkpoint")}


def _start(args: list[str]) -> subprocess.Popen:
    """A training process, returned once it says which model it trains (imports and data loading are done)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("model:"):
            return proc
    raise AssertionError("training never started")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, and how long it took from the start of training to its last line (training, the
    checkpoints and evaluation: the window the kills are placed in)."""
    runs = tmp_path_factory.mktemp("faults") / "runs"
    proc = _start(_train_args(runs, "ref"))
    started = time.perf_counter()
    proc.stdout.read()
    assert proc.wait(timeout=300) == 0
    return runs, time.perf_counter() - started


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_same_weights(reference):
    runs, seconds = reference
    ref = runs / "ref"
    moments = np.sort(np.random.default_rng(0).uniform(0.0, 1.0, KILLS) * seconds)
    outcomes = []
    for i, moment in enumerate(moments):
        name, run = f"kill{i}", runs / f"kill{i}"
        proc = _start(_train_args(runs, name))
        time.sleep(float(moment))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if not (run / "config.yaml").is_file():  # killed before the plan was written: start again, as a user would
            outcomes.append("before config.yaml")
            again = subprocess.run([*_train_args(runs, name), "--force"], capture_output=True, text=True, timeout=300)
            assert again.returncode == 0, again.stderr[-2000:]
        elif not (run / "eval.json").is_file():
            saved = load_checkpoint(run / "last.pt").epoch if (run / "last.pt").exists() else 0
            outcomes.append(f"after epoch {saved}")
            resumed = subprocess.run(_cnnlab("train", "--resume", run), capture_output=True, text=True, timeout=300)
            assert resumed.returncode == 0, resumed.stderr[-2000:]
        else:
            outcomes.append("finished")
        for ckpt in ("best.pt", "last.pt"):
            mine, theirs = _weights(run / ckpt), _weights(ref / ckpt)
            assert all(torch.equal(mine[k], theirs[k]) for k in theirs), (moment, ckpt)
        assert _epochs(run) == list(range(1, EPOCHS + 1)), moment
        assert _scores(run) == _scores(ref), moment
    print("kill points:", outcomes)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoints(tmp_path, cli, monkeypatch):
    from cnnlab.training import fit

    real, calls = fit.save_checkpoint, []

    def full_disk_on_the_third_save(payload, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(payload, path)

    monkeypatch.setattr(fit, "save_checkpoint", full_disk_on_the_third_save)
    code, _, err = cli("train", "--data", "digits", "--epochs", "3", "--runs-dir", tmp_path, "--name", "r",
                       "--no-report")  # fmt: skip
    last_line = err.strip().splitlines()[-1]  # (Lightning's precision note may come first)
    assert code == 2 and last_line.startswith("error: could not write") and "No space left on device" in last_line
    assert "Traceback" not in err and "cnnlab train --resume" in last_line
    assert load_checkpoint(tmp_path / "r" / "last.pt").epoch == 1  # epoch 1 saved whole; epoch 2's save failed
    assert load_checkpoint(tmp_path / "r" / "best.pt").epoch >= 1


def test_a_run_folder_moved_elsewhere_evaluates_and_predicts(reference, tmp_path, cli):
    from PIL import Image

    runs, _ = reference
    moved = tmp_path / "another machine" / "ref"
    shutil.copytree(runs / "ref", moved)
    code, out, err = cli("evaluate", moved)
    assert code == 0, err
    image = tmp_path / "seven.png"
    Image.new("L", (8, 8), 0).save(image)
    code, out, err = cli("predict", moved, image)
    assert code == 0 and out.startswith(str(image)), err


@pytest.mark.slow
def test_two_runs_on_one_name_at_once_leave_one_whole_run(reference, tmp_path):
    runs = tmp_path / "runs"
    procs = [subprocess.Popen(_train_args(runs, "same"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], [r[1][-500:] for r in results]
    loser = next(r for r in results if r[2] == 2)[1]
    assert loser.strip().splitlines()[-1].startswith("error: run folder") and "Traceback" not in loser
    # the winner's folder is whole (its weights may differ from the reference's: under the other process's load
    # the measured precision choice can differ)
    assert load_checkpoint(runs / "same" / "best.pt").epoch >= 1 and (runs / "same" / "eval.json").is_file()
    assert _epochs(runs / "same") == list(range(1, EPOCHS + 1))


@pytest.mark.slow
def test_resume_after_a_kill_before_the_first_epoch_or_during_evaluation(reference, tmp_path, cli):
    """The two states a kill can leave that resume used to refuse, made on purpose: no last.pt yet (it trains
    from the saved plan), and every epoch saved but no eval.json (it evaluates)."""
    runs, _ = reference
    early, late = tmp_path / "early", tmp_path / "late"
    for folder in (early, late):
        shutil.copytree(runs / "ref", folder)
    for name in ("best.pt", "last.pt", "metrics.csv", "eval.json", "predictions.csv", "valid_predictions.csv"):
        (early / name).unlink(missing_ok=True)
    (late / "eval.json").unlink()
    done = subprocess.run(_cnnlab("train", "--resume", early), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "from the start (no epoch had been saved)" in done.stdout, done.stderr[-2000:]
    ref = _weights(runs / "ref" / "last.pt")
    assert all(torch.equal(_weights(early / "last.pt")[k], ref[k]) for k in ref) and _epochs(early) == [1, 2, 3]
    code, out, err = cli("train", "--resume", late)
    assert code == 0 and "finished training before it was stopped; evaluating" in out, err
    assert _scores(late) == _scores(runs / "ref")
    code, _, err = cli("train", "--resume", late)  # now there is nothing left to do
    assert code == 2 and "already finished" in err


def _full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_in_export_explain_or_audit_is_one_line_and_leaves_nothing(digits_cnn_run, tmp_path, cli,
                                                                                monkeypatch):  # fmt: skip
    """Every command's files go through one writer: a full disk is one `error:` line, exit 2, nothing partial."""
    from cnnlab import files
    from cnnlab.explain import run as explain_module
    from cnnlab.export import exporter

    monkeypatch.setattr(exporter, "write_onnx", _full_disk)
    out = tmp_path / "exported"
    code, _, err = cli("export", digits_cnn_run, "--output", out / "m.onnx")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: could not write") and "No space" in err
    assert not (out / "m.onnx").exists() and not any(out.glob(".*"))
    monkeypatch.setattr(explain_module.shutil, "move", _full_disk)
    code, _, err = cli("explain", digits_cnn_run, "--output", tmp_path / "ex", "--embed-samples", "20")
    assert code == 2 and err.startswith("error: could not write") and not any((tmp_path / "ex").glob("*"))
    monkeypatch.setattr(files.os, "replace", _full_disk)  # the rename that ends every atomic write
    code, _, err = cli("audit", digits_cnn_run, "--output", tmp_path / "au", "--no-labels")
    assert code == 2 and err.startswith("error: ") and "No space" in err


def test_audit_of_a_run_writes_where_output_says(digits_cnn_run, tmp_path, cli):
    """`cnnlab audit RUN --output DIR` writes into DIR and leaves the run folder as it was."""
    before = sorted(p.name for p in digits_cnn_run.iterdir())
    code, out, err = cli("audit", digits_cnn_run, "--output", tmp_path / "au", "--no-labels")
    assert code == 0, err
    assert (tmp_path / "au" / "audit.csv").is_file() and (tmp_path / "au" / "audit.json").is_file()
    assert sorted(p.name for p in digits_cnn_run.iterdir()) == before
    code, _, err = cli("audit", digits_cnn_run, "--output", tmp_path / "au", "--no-labels")
    assert code == 2 and "already exists" in err and "--force" in err
