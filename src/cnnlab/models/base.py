"""The classifier interface every registered model follows (timm's convention)."""

from __future__ import annotations

import torch
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
