"""A small on-disk cache of tensors keyed by what produced them (decoded folders, backbone features).

Entries are written atomically and read with `weights_only=True`; an unreadable entry is recomputed,
an unwritable cache folder only costs the reuse, never the run.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cnnlab.files import save_torch_atomic


def cache_key(*parts: Any) -> str:
    """A stable hex digest of JSON-able parts (paths, sizes, names, numbers)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def weights_digest(module, *extra: Any) -> str:
    """A short hash of a module's weights (names and bytes) and `extra` settings: the key of what is computed from
    them (a backbone's feature cache, a model's kept ONNX file)."""
    h = hashlib.sha256("|".join(map(str, extra)).encode())
    for name, value in module.state_dict().items():
        h.update(name.encode())
        h.update(memoryview(value.detach().cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()[:16]


def tensor_digest(t) -> str:
    """A digest of a tensor's bytes and shape: the identity of in-memory images (streamed ones hash their files)."""
    if hasattr(t, "digest"):
        return t.digest()
    return chunks_digest(tuple(t.shape), [t])


def chunks_digest(shape: tuple[int, ...], chunks) -> str:
    """`tensor_digest` of the tensor that `chunks` (consecutive row blocks) would make if concatenated."""
    h = hashlib.sha256(str(tuple(shape)).encode())
    for chunk in chunks:  # the buffer itself: no copy of the images
        h.update(memoryview(chunk.detach().cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()[:24]


def load_or_compute(path: Path, compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The cached dict at `path`, or `compute()` saved there. Returns (value, came_from_cache)."""
    value = load_cached(path)
    if value is not None:
        return value, True
    value = compute()
    store_cached(path, value)
    return value, False


def load_cached(path: Path) -> dict[str, Any] | None:
    """The cached dict at `path`; None when absent, truncated or from another version (then it is recomputed)."""
    path = Path(path)
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated or from another version: recompute
            pass
    return None


def store_cached(path: Path, value: dict[str, Any]) -> None:
    """`value` saved at `path` atomically; a cache that cannot be written is a warning (recomputed next time)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_torch_atomic(value, path)
    except OSError as exc:
        warnings.warn(f"cannot write cache {path} ({exc.strerror}); it will be recomputed next time", stacklevel=3)
