"""Every command with --dry-run exits 0 and writes nothing: the file tree is the same before and after."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnlab.config import DataConfig, RunConfig, TrainConfig
from cnnlab.pipeline import train


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One finished digits run (2 epochs), a second one to compare with, and a digit image to predict."""
    root = tmp_path_factory.mktemp("dry")
    config = RunConfig(data=DataConfig(source="digits"), train=TrainConfig(epochs=2))
    for name in ("a", "b"):
        train(config, runs_dir=root / "runs", name=name, log=lambda _: None)
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(root / "digit.png")
    return root


def _tree(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


COMMANDS = {
    "train": lambda w: ["train", "--data", "digits", "--runs-dir", w / "new-runs"],
    "evaluate": lambda w: ["evaluate", w / "runs" / "a", "--positive", "3"],
    "predict": lambda w: ["predict", w / "runs" / "a", w / "digit.png", "--output", w / "p.csv"],
    "report": lambda w: ["report", w / "runs" / "a", "--positive", "3"],
    "score": lambda w: ["score", w / "runs" / "a" / "predictions.csv", "--output", w / "s.json"],
    "compare": lambda w: ["compare", w / "runs" / "a", w / "runs" / "b", "--output", w / "c.html"],
    "layers": lambda w: ["layers", "lenet5", "--input", "1x32x32"],
    "filters": lambda w: ["filters", w / "digit.png", "--output", w / "f.png"],
    "init-compare": lambda w: ["init-compare", "--data", "digits", "--scheme", "zeros", "--output", w / "i.png"],
    "models": lambda w: ["models"],
    "explain": lambda w: ["explain", w / "runs" / "a"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_dry_run_writes_nothing(cli, workspace, command):
    before = _tree(workspace)
    code, out, err = cli(*COMMANDS[command](workspace), "--dry-run")
    assert code == 0, err
    assert out.strip()  # it still says what it did
    assert _tree(workspace) == before


def test_every_command_with_dry_run_is_covered():
    import typer

    from cnnlab.cli import app

    group = typer.main.get_command(app)
    with_flag = {name for name, cmd in group.commands.items() if any(p.name == "dry_run" for p in cmd.params)}
    assert with_flag == set(COMMANDS)
