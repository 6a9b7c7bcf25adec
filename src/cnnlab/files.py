"""Every file cnnlab writes goes through here: a temp file beside the target, then a rename, so no half-written
output is left; a write that fails (a full disk, a read-only folder) is one `CnnlabError` naming the file."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, WriteFailed


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A unique temp path beside `path` (same suffix, so writers that read it pick the format); renamed onto
    `path` when the block succeeds, removed when it fails."""
    path = Path(path)
    # a unique name, created by the writer with the usual permissions (mkstemp's would be owner-only)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except WriteFailed:
        raise
    except OSError as exc:
        raise WriteFailed(path, exc) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside `target` for an output written in several steps (an export, explain's
    pictures), moved into place by the caller; gone afterwards whatever happens. A failed write inside is one
    `WriteFailed` naming `target`."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as work:
            yield Path(work)
    except WriteFailed:
        raise
    except OSError as exc:
        raise WriteFailed(target, exc) from exc


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def write_json_atomic(path: Path, value: Any) -> None:
    """JSON with NaN written as null (strict JSON readers reject NaN)."""
    write_text_atomic(path, json.dumps(_nan_to_none(value), indent=2))


def read_json(path: Path, *, missing: str) -> dict[str, Any]:
    """A JSON object from `path`; a missing or unreadable file is one error whose fix is `missing`."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"{path} is missing ({missing})")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CnnlabError(f"{path} is not readable JSON ({exc.__class__.__name__}; {missing})") from exc
    if not isinstance(value, dict):
        raise CnnlabError(f"{path} does not hold a JSON object ({missing})")
    return value


def save_torch_atomic(obj: Any, path: Path) -> None:
    """`torch.save` through a unique temp file and a rename (checkpoints, caches)."""
    import torch  # deferred: this leaf also serves the torch-free paths (predicting from an .onnx file)

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_figure_atomic(fig, path: Path, **savefig: Any) -> None:
    """A matplotlib Figure written to `path` (format from its suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **savefig)


def _nan_to_none(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value
