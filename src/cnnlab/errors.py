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


def did_you_mean(value: str, choices: Iterable[str], *, prefix: str = "", cutoff: float = 0.5) -> str:
    """The hint `did you mean 'X'? ` for the choice closest to `value` (shown with `prefix`); empty when none is.

    >>> did_you_mean("resnt18", ["resnet18", "vgg16"], prefix="tv/")
    "did you mean 'tv/resnet18'? "
    >>> did_you_mean("xyz", ["resnet18"])
    ''
    """
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=cutoff)
    return f"did you mean '{prefix}{close[0]}'? " if close else ""


def unknown_choice(what: str, value: str, choices: Iterable[str]) -> CnnlabError:
    """An error for a name not among `choices`, naming the valid ones and the closest match."""
    choices = sorted(choices)
    return CnnlabError(f"unknown {what} '{value}' ({did_you_mean(value, choices)}valid: {', '.join(choices)})")


class WriteFailed(CnnlabError, OSError):
    """A file could not be written (a full disk, a read-only folder); nothing partial was left. Also an OSError,
    so code that tolerates a failed cache write still does."""

    def __init__(self, path, cause: OSError) -> None:
        OSError.__init__(self, cause.errno, cause.strerror, str(path))
        self.message = (
            f"could not write {path}: {cause.strerror or cause} (free some space or choose another folder); "
            "nothing was written"
        )

    def __str__(self) -> str:
        return self.message
