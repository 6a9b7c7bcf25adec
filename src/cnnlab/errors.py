"""User-facing errors: each says what happened and how to fix it, in one line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnlabError(Exception):
    """A problem with the user's input. The CLI prints `error: <message>` and exits 2."""

    exit_code = 2


class TrainingInterrupted(CnnlabError):
    """Ctrl-C during training; `last.pt` holds the last finished epoch."""

    exit_code = 130


def unknown_choice(what: str, value: str, choices: Iterable[str]) -> CnnlabError:
    """An error for a name not among `choices`, naming the valid ones and the closest match."""
    choices = sorted(choices)
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return CnnlabError(f"unknown {what} '{value}' ({hint}valid: {', '.join(choices)})")
