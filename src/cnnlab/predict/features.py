"""Frozen-backbone features, computed once and cached on disk, and batches over them.

With a frozen backbone every epoch would push the same images through the same layers; the course's
recipe does exactly that. Here each image goes through the backbone once (plus K augmented views if
asked) and the pooled features of every level are cached together, so feature extraction, truncation at
any level and their concatenations all read one file. The cache key is the images' bytes, the backbone's
weights and input size, the normalisation and the augmentation, so a changed input never reuses stale
features.
"""

from __future__ import annotations

from collections.abc import Callable
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
        out.append(model.forward_levels(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, sum(model.level_widths()[v] for v in model.all_levels()))


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
    only_cached: bool = False,
) -> torch.Tensor | None:
    """All-level features [1 + views, N, D_all] of uint8 `images` [N, C, H, W]: view 0 plain, views 1..
    augmented by `policy`; `model.select_levels` turns them into that model's features.

    `model` is a PretrainedClassifier (its `forward_levels` in eval mode). Cached under `cache_dir`
    when given; a second call with the same inputs reads the file instead of running the backbone. With
    `only_cached`, None instead of computing what is not cached.
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
    key = cache_key("features-v2", model.backbone_digest(), tensor_digest(images), norm, views, aug, seed)
    path = Path(cache_dir) / "features" / f"{key}.pt"
    if only_cached and not path.is_file():
        return None
    entry, _ = load_or_compute(path, compute)
    return entry["features"]
