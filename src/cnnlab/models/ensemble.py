"""A weighted ensemble of trained classifiers as one model: predict, evaluate, export (one ONNX graph) and serve
take it as they take any other.

The input is the image on the 0..1 scale (the checkpoint's preprocessing: mean 0, std 1); each member applies its
own normalisation (a pretrained backbone's ImageNet statistics, a from-scratch CNN's training-split statistics; a
grey image meeting RGB statistics broadcasts to three channels, as `Normalization.apply` does). The output is the
log of the weighted mean of the members' probabilities: a softmax of it gives that mean back, so every consumer
that turns logits into probabilities reads the ensemble's probabilities unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.base import Classifier

MEMBER_KEYS = ("name", "strategy", "options", "mean", "std", "weight")  # one member's record in config.yaml


class Ensemble(Classifier):
    """`members` (built classifiers) with their input statistics and weights (they sum to 1)."""

    def __init__(self, members: list[nn.Module], means: list[list[float]], stds: list[list[float]],
                 weights: list[float]) -> None:  # fmt: skip
        super().__init__()
        if not members or not len(members) == len(means) == len(stds) == len(weights):
            raise ValueError("an ensemble needs one mean, std and weight per member")
        self.members = nn.ModuleList(members)
        for i, (mean, std) in enumerate(zip(means, stds, strict=True)):
            self.register_buffer(f"mean{i}", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer(f"std{i}", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        total = float(sum(weights))
        self.register_buffer("weights", torch.tensor([w / total for w in weights], dtype=torch.float32))
        self.num_features = sum(m.num_features for m in members)

    @property
    def input_size(self) -> int:
        """The largest side a member computes at (a pretrained backbone resizes to its own): what explaining costs."""
        return max(int(getattr(m, "input_size", 0) or 0) for m in self.members)

    def _member_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return (x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' penultimate features side by side (t-SNE of the ensemble's representation)."""
        return torch.cat([m.forward_features(self._member_input(i, x)) for i, m in enumerate(self.members)], dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        widths = [m.num_features for m in self.members]
        parts = torch.split(features, widths, dim=1)
        return self._combine([m.forward_head(f) for m, f in zip(self.members, parts, strict=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._combine([m(self._member_input(i, x)) for i, m in enumerate(self.members)])

    def _combine(self, logits: list[torch.Tensor]) -> torch.Tensor:
        probs = sum(w * torch.softmax(z.float(), dim=1) for w, z in zip(self.weights, logits, strict=True))
        return torch.log(probs.clamp_min(1e-12))

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError("an ensemble is assembled from trained members; it is not trained as one model")
