"""The course's from-scratch models (MLP, simple CNN, LeNet-5) and the default batch-norm CNN.

All return logits. (The course's MLP applied softmax and then NLLLoss: 63% after 3 epochs on
Fashion-MNIST against 83% with log-probabilities. Cross-entropy on logits does this right.)
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from cnnlab.errors import CnnlabError
from cnnlab.models.arithmetic import conv_output_size
from cnnlab.models.base import Classifier


def _pooled_size(size: int, n_pools: int, model: str, *, kernel: int = 2) -> int:
    """Spatial side after `n_pools` 2x2 poolings; an empty map is an error naming the fix."""
    out = size
    for _ in range(n_pools):
        out = conv_output_size(out, kernel, stride=2)
    if out < 1:
        raise CnnlabError(
            f"{model} needs images of at least {2**n_pools}x{2**n_pools} pixels, got {size}x{size} "
            f"(pass --image-size {2**n_pools} or larger)"
        )
    return out


class MLP(Classifier):
    """The course's 784-512-256-10 perceptron with dropout 0.2, for any input size."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, hidden=(512, 256), dropout=0.2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        self.features = nn.Sequential(*layers)
        self.num_features = width
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class SimpleCNN(Classifier):
    """The course's CNN: three conv3x3-pad1 + ReLU + maxpool blocks (16-32-64), dropout 0.5,
    Linear 512, Linear classes. Padding 1 keeps the size; each pool halves it."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, widths=(16, 32, 64), dropout=0.5):
        super().__init__()
        blocks: list[nn.Module] = []
        c = in_channels
        for w in widths:
            blocks += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.convs = nn.Sequential(*blocks)
        side = _pooled_size(image_size, len(widths), "simple_cnn")
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * side * side, 512), nn.ReLU(inplace=True)
        )
        self.drop = nn.Dropout(dropout)
        self.num_features = 512
        self.head = nn.Linear(512, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(features))


class LeNet5(Classifier):
    """LeCun et al. 1998: conv5x5(6) - avgpool - conv5x5(16) - avgpool - 120 - 84 - classes, tanh.
    The first conv is padded by 2 so a 28x28 image behaves like the original 32x32 input."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
        )  # fmt: skip
        side = conv_output_size(_pooled_size(image_size, 1, "lenet5"), 5)
        side = conv_output_size(side, 2, stride=2)
        if side < 1:
            raise CnnlabError(f"lenet5 needs images of at least 12x12 pixels, got {image_size} (use --image-size 28)")
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh()
        )
        self.num_features = 84
        self.head = nn.Linear(84, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x))


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    # no conv bias: batch norm's shift makes it redundant
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SimpleCNNBN(Classifier):
    """The default from-scratch model: the course's design guidelines (3x3 kernels, padding that keeps
    the size, width doubling, maxpool halving, dropout between linear layers) with batch norm, twice
    the width and light dropout. Measured on Fashion-MNIST: see bench/RESULTS.md."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, widths=(32, 64, 128), dropout=0.2):
        super().__init__()
        blocks: list[nn.Module] = []
        c = in_channels
        for w in widths:
            blocks += [*_conv_bn(c, w), nn.MaxPool2d(2)]
            c = w
        self.convs = nn.Sequential(*blocks)
        side = _pooled_size(image_size, len(widths), "simple_cnn_bn")
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(c * side * side, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(inplace=True)
        )
        self.drop = nn.Dropout(dropout)
        self.num_features = 256
        self.head = nn.Linear(256, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(features))


class ConfigurableCNN(Classifier):
    """The course's design guidelines as options: `widths` per stage (doubling is the habit), `convs`
    per stage, `kernel` with `padding` (None = kernel // 2, which preserves the size), `pool` (2 halves
    the size; 1 = none), `fc` hidden sizes, `dropout` between linear layers, `batch_norm` on/off."""

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int, *, widths=(32, 64, 128), convs: int = 1,
        kernel: int = 3, padding: int | None = None, pool: int = 2, fc=(256,), dropout: float = 0.25,
        batch_norm: bool = True,
    ):  # fmt: skip
        super().__init__()
        padding = kernel // 2 if padding is None else padding
        layers: list[nn.Module] = []
        c, side = in_channels, image_size
        for w in widths:
            for _ in range(convs):
                layers.append(nn.Conv2d(c, w, kernel, padding=padding, bias=not batch_norm))
                layers += [nn.BatchNorm2d(w)] if batch_norm else []
                layers.append(nn.ReLU(inplace=True))
                c, side = w, conv_output_size(side, kernel, padding=padding)
            if pool > 1:
                layers.append(nn.MaxPool2d(pool))
                side = conv_output_size(side, pool, stride=pool)
            if side < 1:
                raise CnnlabError(
                    f"cnn: a {image_size}px input shrinks to nothing after {len(widths)} stages "
                    f"(use fewer widths, padding={kernel // 2}, or a larger --image-size)"
                )
        self.convs = nn.Sequential(*layers)
        hidden: list[nn.Module] = [nn.Flatten()]
        width = c * side * side
        for h in fc:
            hidden += [nn.Dropout(dropout), nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.fc = nn.Sequential(*hidden)
        self.drop = nn.Dropout(dropout)
        self.num_features = width
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(features))


class ResNetSmall(Classifier):
    """A small residual net for 28-64 px images, the larger from-scratch recipe: a 3x3 conv + BN stem at
    full resolution, then one stage per width of torchvision `BasicBlock`s (the first block of each later
    stage halves the size with stride 2 and a 1x1 projection shortcut), global average pooling, dropout,
    linear. About 5x the multiply-adds of `simple_cnn_bn` at the default widths."""

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int, *, widths=(32, 64, 128), blocks: int = 1,
        dropout: float = 0.1,
    ):  # fmt: skip
        super().__init__()
        if blocks < 1 or not widths:
            raise CnnlabError(f"resnet_small needs blocks >= 1 and at least one width, got {blocks}, {widths}")
        _pooled_size(image_size, len(widths) - 1, "resnet_small")
        layers: list[nn.Module] = _conv_bn(in_channels, widths[0])
        c = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            shortcut = None
            if stride != 1 or c != w:
                shortcut = nn.Sequential(nn.Conv2d(c, w, 1, stride=stride, bias=False), nn.BatchNorm2d(w))
            layers.append(BasicBlock(c, w, stride=stride, downsample=shortcut))
            layers += [BasicBlock(w, w) for _ in range(blocks - 1)]
            c = w
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(dropout)
        self.num_features = c
        self.head = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(features))
