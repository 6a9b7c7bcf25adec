"""Checkpoints: the one module that writes and reads them, as a typed record.

File format (an API; FORMAT_VERSION counts its versions, `_migrate` upgrades old files on load):
{format_version, model_name, class_names, preprocessing {image_size, channels, crop_pct, mean, std, resize},
 config (the RunConfig as a dict), model (the state_dict), epoch, best {best_loss, best_epoch, bad_epochs},
 versions {cnnlab, torch}} and, in last.pt only, {optimizer, scheduler, rng_state} for `--resume`.
Version 1 (cnnlab 0.1, before 2026-11-29) had no `versions`. Writes are atomic; loads never run code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from cnnlab.data.batches import Normalization
from cnnlab.errors import CnnlabError
from cnnlab.files import save_torch_atomic
from cnnlab.version import __version__

FORMAT_VERSION = 2
RESIZE_RULE = "shorter side bicubic, centre crop"
REQUIRED_KEYS = ("format_version", "model_name", "model", "class_names", "preprocessing", "config")


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: enough to turn any image file into its input (predict and export need nothing else)."""

    image_size: int  # pixels, square
    channels: int  # 1 grey, 3 RGB
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]
    crop_pct: float = 1.0  # resize the shorter side to image_size / crop_pct, then centre-crop
    resize: str = RESIZE_RULE

    def normalization(self) -> Normalization:
        return Normalization(tuple(self.mean), tuple(self.std))


@dataclass
class TrainingState:
    """What `--resume` needs besides the weights (last.pt only)."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng_state: torch.Tensor


def current_versions() -> dict[str, str]:
    return {"cnnlab": str(__version__), "torch": str(torch.__version__)}  # TorchVersion is not a plain str


@dataclass
class Checkpoint:
    """One checkpoint file in memory. A run builds one without weights as its template (`weights={}`) and
    saves copies with the weights, epoch and tracker state of the moment (`at`)."""

    model_name: str
    class_names: list[str]
    preprocessing: InputSpec
    config: dict[str, Any]  # the run's RunConfig.to_dict()
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int = 0
    best: dict[str, Any] = field(default_factory=dict)
    training: TrainingState | None = None
    versions: dict[str, str] = field(default_factory=current_versions)

    @property
    def strategy(self) -> str | None:
        """The transfer strategy the weights were trained with (None for from-scratch models)."""
        return self.config.get("model", {}).get("strategy")

    def at(self, weights, *, epoch: int, best: dict[str, Any], training: TrainingState | None = None) -> Checkpoint:
        return replace(self, weights=weights, epoch=epoch, best=best, training=training)


def save_checkpoint(ckpt: Checkpoint, path: Path) -> None:
    """Write `ckpt` to `path` via a temp file and rename, so a crash never leaves half a file."""
    p = ckpt.preprocessing
    payload = {
        "format_version": FORMAT_VERSION, "model_name": ckpt.model_name, "class_names": list(ckpt.class_names),
        "preprocessing": {"image_size": p.image_size, "channels": p.channels, "crop_pct": p.crop_pct,
                          "mean": list(p.mean), "std": list(p.std), "resize": p.resize},
        "config": ckpt.config, "model": ckpt.weights, "epoch": ckpt.epoch, "best": ckpt.best,
        "versions": ckpt.versions,
    }  # fmt: skip
    if ckpt.training is not None:
        t = ckpt.training
        payload |= {"optimizer": t.optimizer, "scheduler": t.scheduler, "rng_state": t.rng_state}
    save_torch_atomic(payload, path)


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a cnnlab checkpoint safely (tensors and plain containers only; no code runs), upgrading old formats."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"checkpoint not found: {path} (train the run first, or pass an existing .pt file)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own text goes on to suggest weights_only=False: never that
        raise CnnlabError(
            f"cannot load checkpoint {path}: it holds something other than tensors and plain values, so "
            "safe loading refused it (a damaged file, or not a cnnlab checkpoint; nothing in it was run)"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CnnlabError(f"cannot load checkpoint {path}: {first[:200]} (is it a cnnlab .pt file?)") from exc
    if not isinstance(raw, dict) or any(k not in raw for k in REQUIRED_KEYS):
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (missing model/config metadata)")
    if not isinstance(raw["format_version"], int) or raw["format_version"] > FORMAT_VERSION:
        raise CnnlabError(
            f"{path} has checkpoint format {raw['format_version']}, newer than this cnnlab reads "
            f"({FORMAT_VERSION}); upgrade cnnlab"
        )
    raw = _migrate(raw)
    p = raw["preprocessing"]
    training = None
    if "optimizer" in raw:
        training = TrainingState(raw["optimizer"], raw["scheduler"], raw["rng_state"])
    return Checkpoint(
        raw["model_name"], list(raw["class_names"]),
        InputSpec(int(p["image_size"]), int(p["channels"]), tuple(p["mean"]), tuple(p["std"]),
                  float(p.get("crop_pct", 1.0)), p.get("resize", RESIZE_RULE)),
        raw["config"], raw["model"], int(raw.get("epoch", 0)), dict(raw.get("best") or {}), training,
        dict(raw["versions"]),
    )  # fmt: skip


def _migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """Upgrade an older file's dict step by step to FORMAT_VERSION."""
    if raw["format_version"] == 1:  # cnnlab 0.1: no versions recorded
        raw = {**raw, "versions": {"cnnlab": "0.1 (format 1)", "torch": "unknown"}, "format_version": 2}
    return raw


def check_compatible(ckpt: Checkpoint, *, model_name: str, class_names: list[str], path: Path) -> None:
    """Refuse a checkpoint made for another model or another set of classes."""
    if ckpt.model_name != model_name or len(ckpt.class_names) != len(class_names):
        raise CnnlabError(
            f"checkpoint {path} is for model '{ckpt.model_name}' with {len(ckpt.class_names)} classes, "
            f"but this run uses '{model_name}' with {len(class_names)} classes "
            "(use a checkpoint trained for this run's model and data)"
        )
    if list(ckpt.class_names) != list(class_names):
        raise CnnlabError(
            f"checkpoint {path} was trained on classes {ckpt.class_names}, this run has {class_names} "
            "(use a checkpoint trained on the same classes)"
        )
