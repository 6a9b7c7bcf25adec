"""`create_model(name, ...)` and `list_models()`: one table of builders, no import-time magic."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnlab.errors import CnnlabError, unknown_choice
from cnnlab.models import capsnet, classic, pretrained, scratch
from cnnlab.models.ensemble import Ensemble

ENSEMBLE = "ensemble"  # assembled by the model search from trained members (training/ensemble.py), never by hand


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]  # (num_classes, in_channels, image_size) -> Classifier
    summary: str
    min_size: int  # smallest input side in pixels
    adapted: str = ""  # what changed for small inputs


_MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(scratch.MLP, "course MLP: flatten-512-256-classes, ReLU, dropout 0.2", 1),
    "simple_cnn": ModelEntry(
        scratch.SimpleCNN, "course CNN: 3x(conv3x3 16/32/64, ReLU, maxpool), dropout 0.5, fc 512", 8
    ),
    "lenet5": ModelEntry(scratch.LeNet5, "LeNet-5 (1998): conv5x5 6/16, tanh, avg-pool, fc 120-84", 12),
    "simple_cnn_bn": ModelEntry(
        scratch.SimpleCNNBN, "default: 3x(conv3x3 32/64/128, batch norm, ReLU, maxpool), fc 256 + BN, dropout 0.2", 8
    ),
    "cnn": ModelEntry(
        scratch.ConfigurableCNN, "configurable: widths, convs, kernel, padding, pool, fc, dropout, batch_norm", 8
    ),
    "resnet_small": ModelEntry(
        scratch.ResNetSmall, "small residual net: conv stem + BasicBlock stages 32/64/128, avg-pool (larger recipe)", 4
    ),
    "capsnet": ModelEntry(
        capsnet.CapsNet, "capsule network (2017): primary + class capsules, 3 routing iterations", 25
    ),
    **{
        name: ModelEntry(getattr(classic, name), summary, 8, classic.ADAPTATIONS[name])
        for name, summary in {
            "alexnet": "AlexNet (2012), torchvision",
            "vgg11": "VGG-11 with batch norm (2014), torchvision",
            "vgg16": "VGG-16 with batch norm (2014), torchvision",
            "resnet18": "ResNet-18 (2015), torchvision",
            "resnet50": "ResNet-50 (2015), torchvision",
            "inception_v3": "Inception-v3 (2015) with aux logits, torchvision",
            "densenet121": "DenseNet-121 (2016), torchvision",
            "squeezenet1_1": "SqueezeNet 1.1 (2016), torchvision",
        }.items()
    },
}


def list_models() -> list[str]:
    """The from-scratch models (scratch, classic, capsnet); see `list_pretrained` for backbones."""
    return sorted(_MODELS)


def list_pretrained() -> list[str]:
    """Backbones with ImageNet weights available offline; `timm/NAME` and `tv/NAME` also work online."""
    return sorted(pretrained.OFFLINE)


def describe_model(name: str) -> ModelEntry:
    if pretrained.is_pretrained_name(name):
        arch = pretrained.timm_name(name)  # an unknown timm / torchvision name fails here
        return ModelEntry(
            functools.partial(pretrained.PretrainedClassifier, backbone=name),
            f"ImageNet-pretrained timm '{arch}' + new linear head (--strategy picks what trains)", 32,
            "inputs resized to the backbone's size inside the model; grey broadcast to RGB",
        )  # fmt: skip
    if name not in _MODELS:
        raise unknown_choice("model", name, [*_MODELS, *pretrained.OFFLINE, "timm/NAME", "tv/NAME"])
    return _MODELS[name]


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 1,
    image_size: int = 28,
    options: dict | None = None,
    strategy: str | None = None,
) -> nn.Module:
    """Build model `name` for `num_classes` classes and `in_channels` x `image_size`^2 inputs.

    `options` are the model's own keyword arguments (e.g. cnn's `widths`). An unknown name or option
    raises a CnnlabError listing the valid ones and the closest match. Pretrained backbones are built
    without weights (`pretrained.load_pretrained` adds them) for the transfer `strategy` given.
    """
    if name == ENSEMBLE:
        return _ensemble(num_classes, in_channels, image_size, **(options or {}))
    entry = describe_model(name)
    options = dict(options or {})
    if pretrained.is_pretrained_name(name):
        options.setdefault("strategy", strategy or "fine-tune")
    params = inspect.signature(entry.build).parameters.values()
    valid = [p for p in params if p.kind == p.KEYWORD_ONLY and p.name != "backbone"]
    for key in options:
        if key not in {p.name for p in valid}:
            raise unknown_choice(f"option for model '{name}'", key, [p.name for p in valid] or ["(none)"])
    return entry.build(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)


def _ensemble(num_classes: int, in_channels: int, image_size: int, *, members: list[dict]) -> Ensemble:
    """The ensemble a checkpoint records: each member built as its own run would build it (models/ensemble.py)."""
    nets = [
        create_model(m["name"], num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                     options=m.get("options"), strategy=m.get("strategy"))
        for m in members
    ]  # fmt: skip
    return Ensemble(nets, [m["mean"] for m in members], [m["std"] for m in members], [m["weight"] for m in members])


def catalogue(*, image_size: int = 28, in_channels: int = 1) -> str:
    """`cnnlab models`: every registered model with its parameter count for 10 classes at the given input, then
    the pretrained backbones."""
    lines = [f"{'model':<16}{'params':>12}  description (at {in_channels}x{image_size}x{image_size}, 10 classes)"]
    for name in list_models():
        entry = describe_model(name)
        try:
            net = create_model(name, num_classes=10, in_channels=in_channels, image_size=image_size)
            count = f"{sum(p.numel() for p in net.parameters()):,}"
        except CnnlabError:
            count = f"needs >={entry.min_size}px"
        lines.append(f"{name:<16}{count:>12}  {entry.summary}")
        if entry.adapted and image_size < 64:
            lines.append(f"{'':<30}adapted: {entry.adapted}")
    lines.append("\npretrained backbones (ImageNet weights; train with --strategy, predict with --model):")
    for name in list_pretrained():
        net = create_model(name, num_classes=10, in_channels=3, image_size=224, strategy="fine-tune")
        lines.append(f"{name:<20}{sum(p.numel() for p in net.parameters()):>8,}  weights ship with pip (offline)")
    lines.append(f"{'timm/NAME, tv/NAME':<30}any timm model / torchvision classic: downloaded, or --weights PATH")
    return "\n".join(lines)
