"""Shared fixtures: a CLI runner, and a small CNN trained on real digits once per session (each test module
gets its own copy of the run folder, which it may change)."""

from __future__ import annotations

from pathlib import Path

# Lightning binds its log handler to the stderr of the moment it is first imported; imported inside a test,
# that is the test's captured stderr, closed afterwards, and every later "Using bf16" note became a logging
# error in another test's output. Imported here, it binds the session's stderr.
import lightning.fabric  # noqa: F401
import pytest

from cnnlab.cli import main


@pytest.fixture
def cli(capsys):
    """Run `cnnlab ARGS...` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def _digits_cnn_trained(tmp_path_factory):
    """A `cnn` (widths 16, 32) trained 4 epochs on scikit-learn's real 8x8 digits, no report: about 90% test.
    Trained once per session in fp32 (forced: the same run on every CPU, whatever precision it measures)."""
    from cnnlab.config import RunConfig, with_overrides
    from cnnlab.pipeline import train

    cfg = with_overrides(RunConfig(), "data", source="digits")
    cfg = with_overrides(cfg, "model", name="cnn", options={"widths": [16, 32]})
    cfg = with_overrides(cfg, "train", epochs=4, precision="32-true")
    return train(cfg, runs_dir=tmp_path_factory.mktemp("runs"), name="d", log=lambda _: None, report=False).run_dir


@pytest.fixture(scope="module")
def digits_cnn_run(_digits_cnn_trained, tmp_path_factory):
    """The session's trained digits run, copied for this module (modules add exports, reports, explanations)."""
    import shutil

    return Path(shutil.copytree(_digits_cnn_trained, tmp_path_factory.mktemp("run") / "d"))
