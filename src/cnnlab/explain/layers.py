"""Which layers of a trained model produce feature maps, found by running it once with hooks (so the same
code serves the course CNNs, ResNets and timm backbones), and what those layers hold.

A layer here is any module whose output is a 4-D map [N, C, H, W]. A *stage* is the last layer to finish
at each resolution that a convolution produces: the activations the course shows after each conv block.
Grad-CAM reads the last layer at the last convolution's resolution (for a ResNet, the residual block's
output, skip connection included), as its authors take the last convolutional layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # the module's class name
    shape: tuple[int, int, int]  # C, H, W of its output for one image
    conv: bool  # a Conv2d


def explainable(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose ReLUs are not in place: hooks and gradient methods read layer outputs that an
    in-place activation would overwrite."""
    twin = copy.deepcopy(model).float().eval()
    for module in twin.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return twin


def trace_layers(model: nn.Module, x: torch.Tensor) -> list[Layer]:
    """Every module with a 4-D output, in the order they finish during a forward pass of `x` (one image)."""
    found: list[Layer] = []
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(mod, _inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                found.append(Layer(name, type(mod).__name__, tuple(output.shape[1:]), isinstance(mod, nn.Conv2d)))

        hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    seen: dict[str, Layer] = {}
    for layer in found:  # a module called twice keeps its last call
        seen.pop(layer.name, None)
        seen[layer.name] = layer
    return list(seen.values())


def stage_layers(layers: list[Layer]) -> list[Layer]:
    """The last layer to finish at each resolution a convolution produces, in forward order."""
    sizes = [layer.shape[1:] for layer in layers if layer.conv]
    last = {}
    for layer in layers:
        if layer.shape[1:] in sizes:
            last[layer.shape[1:]] = layer
    return sorted(last.values(), key=layers.index)


def gradcam_layer(layers: list[Layer]) -> Layer:
    """Where Grad-CAM looks: the last layer at the last convolution's resolution."""
    convs = [layer for layer in layers if layer.conv]
    if not convs:
        raise CnnlabError("this model has no convolution layer: Grad-CAM and feature maps need a CNN")
    size = convs[-1].shape[1:]
    return [layer for layer in layers if layer.shape[1:] == size][-1]


def pick_layers(layers: list[Layer], names: list[str] | None) -> list[Layer]:
    """`names` (from --layer) as layers, or the stages; an unknown name lists the valid ones."""
    if not names:
        return stage_layers(layers)
    by_name = {layer.name: layer for layer in layers}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        valid = ", ".join(by_name)
        raise CnnlabError(f"unknown layer '{unknown[0]}' (layers with feature maps: {valid})")
    return [by_name[n] for n in names]


def module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


def activations(model: nn.Module, x: torch.Tensor, layers: list[Layer]) -> dict[str, torch.Tensor]:
    """The outputs of `layers` for the images `x`: {name: [N, C, H, W]}."""
    out: dict[str, torch.Tensor] = {}
    hooks = [
        module(model, layer.name).register_forward_hook(
            lambda _m, _i, o, name=layer.name: out.__setitem__(name, o.detach())
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def conv_weight_stats(model: nn.Module) -> list[dict]:
    """One row per convolution: shape and weight statistics (a dead or exploding layer shows here)."""
    rows = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            w = mod.weight.detach().float()
            rows.append({
                "layer": name, "shape": list(w.shape), "mean": float(w.mean()), "std": float(w.std()),
                "min": float(w.min()), "max": float(w.max()),
                "near_zero": float((w.abs() < 1e-3 * float(w.abs().max())).float().mean()),
            })  # fmt: skip
    return rows


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            return name, mod
    raise CnnlabError("this model has no convolution layer: nothing to show as filters")
