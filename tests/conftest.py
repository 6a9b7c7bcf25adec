"""Shared fixtures: a CLI runner."""

from __future__ import annotations

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
