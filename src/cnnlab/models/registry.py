"""`create_model(name, ...)` and `list_models()`: one table of builders, no import-time magic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnlab.errors import unknown_choice
from cnnlab.models import scratch


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]  # (num_classes, in_channels, image_size) -> Classifier
    summary: str
    min_size: int  # smallest input side in pixels


_MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(scratch.MLP, "course MLP: flatten-512-256-classes, ReLU, dropout 0.2", 1),
    "simple_cnn": ModelEntry(
        scratch.SimpleCNN, "course CNN: 3x(conv3x3 16/32/64, ReLU, maxpool), dropout 0.5, fc 512", 8
    ),
    "lenet5": ModelEntry(scratch.LeNet5, "LeNet-5 (1998): conv5x5 6/16, tanh, avg-pool, fc 120-84", 12),
    "simple_cnn_bn": ModelEntry(
        scratch.SimpleCNNBN, "default: 3x(conv3x3 32/64/128, batch norm, ReLU, maxpool), fc 256 + BN, dropout 0.2", 8
    ),
}


def list_models() -> list[str]:
    return sorted(_MODELS)


def describe_model(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise unknown_choice("model", name, _MODELS)
    return _MODELS[name]


def create_model(name: str, *, num_classes: int, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Build model `name` for `num_classes` classes and `in_channels` x `image_size`^2 inputs.

    An unknown name raises a CnnlabError listing the valid names and the closest match.
    """
    return describe_model(name).build(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
