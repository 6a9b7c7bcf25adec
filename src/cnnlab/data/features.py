"""Frozen-backbone features, computed once and cached on disk, and batches over them.

With a frozen backbone every epoch would push the same images through the same layers; the course's
recipe does exactly that. Here each image goes through the backbone once (plus K augmented views if
asked), and the head trains on the cached vectors. The cache key is the images' bytes, the backbone's
weights and cut, the normalisation and the augmentation, so a changed input never reuses stale features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from cnnlab.data.augment import AugmentPolicy, augment_batch
from cnnlab.data.batches import Normalization
from cnnlab.data.cache import cache_key, load_or_compute, tensor_digest


@torch.inference_mode()
def _compute(model, images: torch.Tensor, norm: Normalization, policy, gen, batch_size: int, device) -> torch.Tensor:
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        if policy is not None and policy.active:
            x = augment_batch(x.float() * (1 / 255), policy, gen)
        x = norm.apply(x).contiguous(memory_format=torch.channels_last)
        out.append(model.forward_features(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, model.num_features)


def backbone_features(
    model,
    images: torch.Tensor,
    norm: Normalization,
    *,
    cache_dir: Path | None,
    views: int = 0,
    policy: AugmentPolicy | None = None,
    seed: int = 0,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Features [1 + views, N, D] of uint8 `images` [N, C, H, W]: view 0 plain, views 1.. augmented by `policy`.

    `model` is a PretrainedClassifier (its `forward_features` in eval mode). Cached under `cache_dir`
    when given; a second call with the same inputs reads the file instead of running the backbone.
    """
    device = next(model.parameters()).device
    model.eval()

    def compute() -> dict:
        if log:
            log(f"features: {len(images)} images x {1 + views} view(s) through the frozen backbone (cached after)")
        gen = torch.Generator().manual_seed(seed)
        stack = [_compute(model, images, norm, None, gen, batch_size, device)]
        stack += [_compute(model, images, norm, policy, gen, batch_size, device) for _ in range(views)]
        return {"features": torch.stack(stack)}

    if cache_dir is None:
        return compute()["features"]
    aug = repr(policy) if views else ""
    key = cache_key("features-v1", model.backbone_digest(), tensor_digest(images), norm, views, aug, seed)
    entry, _ = load_or_compute(Path(cache_dir) / "features" / f"{key}.pt", compute)
    return entry["features"]


class FeatureBatches:
    """Batches of (features, labels) over cached features [V, N, D]; epoch e uses view e mod V, so K
    augmented views give K epochs of different inputs at the cost of one backbone pass each."""

    def __init__(
        self, features: torch.Tensor, labels: torch.Tensor, *, batch_size: int, shuffle: bool = False,
        seed: int = 0, drop_last: bool = False, max_batches: int | None = None,
    ):  # fmt: skip
        self.features, self.labels = features, labels
        self.batch_size, self.shuffle, self.seed, self.max_batches = batch_size, shuffle, seed, max_batches
        self.drop_last = drop_last and labels.shape[0] > batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.labels.shape[0]
        full = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return min(full, self.max_batches) if self.max_batches else full

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        view = self.features[self.epoch % len(self.features)] if self.shuffle else self.features[0]
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = self.labels.shape[0]
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield view[idx].to(self.labels.device), self.labels[idx]
