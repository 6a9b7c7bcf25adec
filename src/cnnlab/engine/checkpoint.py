"""Checkpoints: atomic writes, `weights_only` loads, and a compatibility check with clear errors.

Format (an API; bump FORMAT_VERSION and migrate in `load_checkpoint` when it changes):
{format_version, model_name, model, optimizer, scheduler, epoch, config, class_names, preprocessing,
 best, rng_state}. `best.pt` omits the optimizer, scheduler and RNG state.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.files import save_torch_atomic

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_name", "model", "class_names", "preprocessing", "config")


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write `payload` to `path` via a temp file and rename, so a crash never leaves half a file."""
    save_torch_atomic({"format_version": FORMAT_VERSION, **payload}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a cnnlab checkpoint safely (tensors and plain containers only; no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"checkpoint not found: {path} (train the run first, or pass an existing .pt file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CnnlabError(f"cannot load checkpoint {path}: {first[:200]} (is it a cnnlab .pt file?)") from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (missing model/config metadata)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CnnlabError(
            f"{path} has checkpoint format {ckpt['format_version']}, newer than this cnnlab reads "
            f"({FORMAT_VERSION}); upgrade cnnlab"
        )
    return ckpt


def check_compatible(ckpt: dict[str, Any], *, model_name: str, class_names: list[str], path: Path) -> None:
    """Refuse a checkpoint made for another model or another set of classes."""
    if ckpt["model_name"] != model_name or len(ckpt["class_names"]) != len(class_names):
        raise CnnlabError(
            f"checkpoint {path} is for model '{ckpt['model_name']}' with {len(ckpt['class_names'])} classes, "
            f"but this run uses '{model_name}' with {len(class_names)} classes "
            "(use a checkpoint trained for this run's model and data)"
        )
    if list(ckpt["class_names"]) != list(class_names):
        raise CnnlabError(
            f"checkpoint {path} was trained on classes {ckpt['class_names']}, this run has {class_names} "
            "(use a checkpoint trained on the same classes)"
        )
