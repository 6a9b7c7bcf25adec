"""Watching a run in TensorBoard (`--logger tensorboard`; view with `tensorboard --logdir runs`).

metrics.csv is always written (resume and the report read it); the TensorBoard log adds what a person
watches while a run trains: the training loss and learning rate every few optimiser steps (x axis: step),
per-epoch losses, accuracies, learning rate and images/s (x axis: epoch), the run's config as
hyperparameters, and at the end the test accuracy, the confusion matrix and a grid of sample predictions.
Written through Lightning Fabric's TensorBoardLogger into `RUN/tensorboard/`; a resumed run continues the
same curves (step events after the resumed checkpoint are purged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.extras import install_hint

LOGGERS = ("csv", "tensorboard")
STEP_EVERY = 25  # optimiser steps between logged training losses (each costs one device sync)
SUBDIR = "tensorboard"


def tensorboard_logger(run_dir: Path, **kwargs):
    try:
        from lightning.fabric.loggers import (
            TensorBoardLogger,
        )  # optional heavy import: Lightning (~1.5 s to import; training only)

        return TensorBoardLogger(root_dir=run_dir, name=SUBDIR, version="", default_hp_metric=False, **kwargs)
    except ModuleNotFoundError as exc:  # Fabric names the missing package in its own message
        raise CnnlabError(install_hint(["tensorboard"], "--logger tensorboard")) from exc


class TensorBoardLog:
    """Scalars of one training run; `fit` calls `step` after every optimiser step and `epoch` after each epoch."""

    def __init__(self, run_dir: Path, *, steps_per_epoch: int, start_epoch: int = 1, config: dict | None = None):
        self.global_step = (start_epoch - 1) * steps_per_epoch
        self.logger = tensorboard_logger(Path(run_dir), purge_step=self.global_step + 1 if start_epoch > 1 else None)
        if config is not None and start_epoch == 1:
            self.logger.log_hyperparams(_flatten(config))

    def step(self, loss: torch.Tensor, lr: float) -> None:
        self.global_step += 1
        if self.global_step % STEP_EVERY == 0:
            self.logger.log_metrics({"train/loss_step": float(loss.detach()), "train/lr": lr}, step=self.global_step)

    def epoch(self, stats) -> None:
        """Per-epoch scalars from an EpochStats."""
        self.logger.log_metrics(
            {
                "loss/train": stats.train_loss, "loss/valid": stats.valid_loss,
                "accuracy/train": stats.train_acc, "accuracy/valid": stats.valid_acc,
                "lr": stats.lr, "speed/images_per_s": stats.images_per_s,
            },
            step=stats.epoch,
        )  # fmt: skip
        self.logger.experiment.flush()

    def close(self) -> None:
        self.logger.finalize("success")


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"train.lr": 0.003, ...}, values TensorBoard's hparams accept (lists as text)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = "none" if value is None else value
        else:
            flat[name] = str(value)
    return flat
