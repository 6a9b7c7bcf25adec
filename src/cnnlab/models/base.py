"""The classifier interface every registered model follows (timm's convention), with the defaults the engine
relies on: a model overrides a method only where it differs (no `hasattr` probing anywhere else)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Classifier(nn.Module):
    """features -> head. `forward_features` gives the penultimate representation (what feature
    extraction, t-SNE and fine-tuning use); `forward_head` maps it to logits (never probabilities)."""

    num_features: int
    head: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer with a freshly initialised one for `num_classes` classes."""
        self.head = nn.Linear(self.num_features, num_classes)

    @property
    def frozen(self) -> bool:
        """True when only a linear head on fixed features trains (a frozen pretrained backbone): the engine then
        fits the head on cached features instead of running epochs over images."""
        return False

    def compute_loss(self, output, y: torch.Tensor, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, logits) for a forward `output`. Models with auxiliary outputs (Inception's aux
        logits, a capsule net's margin + reconstruction loss) override it."""
        return F.cross_entropy(output, y, label_smoothing=label_smoothing), output

    def parameter_groups(self, backbone_lr_scale: float) -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, lr multiplier) groups; one group at the full rate unless a model says otherwise."""
        return [(list(self.parameters()), 1.0)]

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides biases and norm weights (timm's convention)."""
        return set()
