"""The classic architectures by name, from torchvision's definitions, adapted to any channel count and
to the small inputs of a CNN course (28x28, 32x32). `ADAPTATIONS` says what changed for small inputs.

Each builder returns a `Classifier` (forward_features / forward_head / reset_classifier) wrapping the
torchvision network, randomly initialised (pretrained weights are the transfer-learning path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tv

from cnnlab.errors import CnnlabError
from cnnlab.models.base import Classifier

SMALL = 64  # below this side, the small-input variant is built

ADAPTATIONS = {
    "alexnet": "below 64 px: input resized to 64x64 (the 11x11 stride-4 stem needs it)",
    "vgg11": "below 64 px: one maxpool fewer, global pool + 512-512 classifier instead of 7x7 + 4096-4096",
    "vgg16": "below 64 px: one maxpool fewer, global pool + 512-512 classifier instead of 7x7 + 4096-4096",
    "resnet18": "below 64 px: 3x3 stride-1 stem, no stem maxpool (CIFAR-style)",
    "resnet50": "below 64 px: 3x3 stride-1 stem, no stem maxpool (CIFAR-style)",
    "inception_v3": "input resized to 75 px below that; below 299 px the aux head pools adaptively to 5x5",
    "densenet121": "below 64 px: 3x3 stride-1 stem, no stem maxpool",
    "squeezenet1_1": "below 64 px: 3x3 stride-1 stem",
}


class TorchvisionClassifier(Classifier):
    """A torchvision net split into features (everything up to the pooled vector) and a linear head."""

    def __init__(self, features: nn.Module, num_features: int, num_classes: int, *, resize_to: int | None = None):
        super().__init__()
        self.body, self.num_features, self.resize_to = features, num_features, resize_to
        self.head = nn.Linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize_to is not None and x.shape[-1] < self.resize_to:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        return self.body(x)


def _conv_like(old: nn.Conv2d, in_channels: int, *, kernel=None, stride=None, padding=None) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, old.out_channels, kernel or old.kernel_size, stride=stride or old.stride,
        padding=old.padding if padding is None else padding, bias=old.bias is not None,
    )  # fmt: skip


def _pooled(*modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(*modules, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def alexnet(num_classes: int, in_channels: int, image_size: int) -> Classifier:
    net = tv.alexnet(num_classes=num_classes)
    net.features[0] = _conv_like(net.features[0], in_channels)
    # the classifier's first two layers (dropout, 9216->4096, ReLU, dropout, 4096->4096, ReLU) are features
    body = nn.Sequential(net.features, net.avgpool, nn.Flatten(), *list(net.classifier.children())[:-1])
    return TorchvisionClassifier(body, 4096, num_classes, resize_to=64 if image_size < SMALL else None)


def _vgg(builder, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    net = builder(num_classes=num_classes)
    layers = list(net.features.children())
    layers[0] = _conv_like(layers[0], in_channels)
    if image_size >= SMALL:
        body = nn.Sequential(nn.Sequential(*layers), net.avgpool, nn.Flatten(), *list(net.classifier.children())[:-1])
        return TorchvisionClassifier(body, 4096, num_classes)
    layers = layers[:-1]  # drop the fifth maxpool: 32 px would end at 1x1 before it, 28 px at 0
    fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.5))
    return TorchvisionClassifier(nn.Sequential(_pooled(*layers), fc), 512, num_classes)


def vgg11(num_classes: int, in_channels: int, image_size: int) -> Classifier:
    return _vgg(tv.vgg11_bn, num_classes, in_channels, image_size)


def vgg16(num_classes: int, in_channels: int, image_size: int) -> Classifier:
    return _vgg(tv.vgg16_bn, num_classes, in_channels, image_size)


def _resnet(builder, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    net = builder(num_classes=num_classes)
    if image_size < SMALL:
        net.conv1 = _conv_like(net.conv1, in_channels, kernel=3, stride=1, padding=1)
        net.maxpool = nn.Identity()
    else:
        net.conv1 = _conv_like(net.conv1, in_channels)
    stages = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4]
    return TorchvisionClassifier(_pooled(*stages), net.fc.in_features, num_classes)


def resnet18(num_classes: int, in_channels: int, image_size: int) -> Classifier:
    return _resnet(tv.resnet18, num_classes, in_channels, image_size)


def resnet50(num_classes: int, in_channels: int, image_size: int) -> Classifier:
    return _resnet(tv.resnet50, num_classes, in_channels, image_size)


def densenet121(num_classes: int, in_channels: int, image_size: int) -> Classifier:
    net = tv.densenet121(num_classes=num_classes)
    feats = net.features
    if image_size < SMALL:
        feats.conv0 = _conv_like(feats.conv0, in_channels, kernel=3, stride=1, padding=1)
        feats.pool0 = nn.Identity()
    else:
        feats.conv0 = _conv_like(feats.conv0, in_channels)
    return TorchvisionClassifier(_pooled(feats, nn.ReLU(inplace=True)), net.classifier.in_features, num_classes)


def squeezenet1_1(num_classes: int, in_channels: int, image_size: int) -> Classifier:
    net = tv.squeezenet1_1(num_classes=num_classes)
    if image_size < SMALL:
        net.features[0] = _conv_like(net.features[0], in_channels, kernel=3, stride=1, padding=1)
    else:
        net.features[0] = _conv_like(net.features[0], in_channels)
    # SqueezeNet has no linear layer; its "head" here is a 1x1-conv-equivalent linear map on pooled features
    return TorchvisionClassifier(_pooled(net.features, nn.Dropout(0.5)), 512, num_classes)


class _AdaptiveAux(nn.Module):
    """torchvision's InceptionAux with a 5x5 adaptive pool, so inputs under 299 px keep the aux head."""

    def __init__(self, aux: nn.Module):
        super().__init__()
        self.conv0, self.conv1, self.fc = aux.conv0, aux.conv1, aux.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(F.adaptive_avg_pool2d(x, 5)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InceptionV3(Classifier):
    """Inception-v3 (Szegedy et al. 2016). In training, `forward` returns (logits, aux_logits) and
    `compute_loss` adds 0.4 x the auxiliary loss; in evaluation only the main logits are used."""

    AUX_WEIGHT = 0.4

    def __init__(self, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        net = tv.inception_v3(num_classes=num_classes, aux_logits=True, init_weights=True, transform_input=False)
        net.Conv2d_1a_3x3.conv = _conv_like(net.Conv2d_1a_3x3.conv, in_channels)
        self.net = net
        self.net.AuxLogits = _AdaptiveAux(net.AuxLogits)
        self.resize_to = 75 if image_size < 75 else None
        self.num_features = net.fc.in_features
        self.head = nn.Linear(self.num_features, num_classes)
        self.net.fc = nn.Identity()

    def _stem_to_6e(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        if self.resize_to is not None:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e"):  # fmt: skip
            x = getattr(n, name)(x)
        return x

    def _6e_to_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.Mixed_7c(n.Mixed_7b(n.Mixed_7a(x)))
        return n.dropout(torch.flatten(n.avgpool(x), 1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._6e_to_features(self._stem_to_6e(x))

    def forward(self, x: torch.Tensor):
        mid = self._stem_to_6e(x)
        logits = self.head(self._6e_to_features(mid))
        if self.training:
            return logits, self.net.AuxLogits(mid)
        return logits

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        self.net.AuxLogits.fc = nn.Linear(self.net.AuxLogits.fc.in_features, num_classes)

    def compute_loss(self, output, y: torch.Tensor, label_smoothing: float):
        logits, aux = output
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        return loss + self.AUX_WEIGHT * F.cross_entropy(aux, y, label_smoothing=label_smoothing), logits


def inception_v3(num_classes: int, in_channels: int, image_size: int) -> Classifier:
    if image_size < 1:
        raise CnnlabError(f"inception_v3 needs a positive image size, got {image_size}")
    return InceptionV3(num_classes, in_channels, image_size)
