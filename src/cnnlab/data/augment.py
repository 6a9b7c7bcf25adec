"""Per-sample random augmentation applied to a whole batch with one `grid_sample` (no Python per image).

Each image gets its own random affine map (flip, rotation, scale, translation), the tensor form of the
course's RandomHorizontalFlip / RandomRotation / RandomResizedCrop / RandomCrop(padding); with `erase`, a random
rectangle blacked out (torchvision's RandomErasing: 2-33% of the area, aspect 0.3-3.3; Zhong et al. 2020).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnlab.config import Augment


@dataclass(frozen=True)
class AugmentPolicy:
    flip: bool = False  # horizontal flip with probability 0.5
    max_shift: float = 0.0  # fraction of the side, each direction
    max_degrees: float = 0.0  # rotation, each direction
    min_scale: float = 1.0  # side fraction of the zoomed-in crop (random resized crop)
    integer_shift: bool = False  # shift by whole pixels, so no interpolation blur
    erase: float = 0.0  # probability of blacking out a random rectangle (random erasing)

    @property
    def active_geometry(self) -> bool:
        return self.flip or self.max_shift > 0 or self.max_degrees > 0 or self.min_scale < 1

    @property
    def active(self) -> bool:
        return self.active_geometry or self.erase > 0


def policy_for(preset: Augment, *, flip_invariant: bool) -> AugmentPolicy:
    """Presets: none; light = flip + shift of up to 1/14 of the side (2 px at 28 px); erase = light + random
    erasing (half the images); standard = flip, rotation +-10 degrees, crops of 80-100% of the side and 10% shifts.
    Flips only where they keep the label."""
    if preset == "none":
        return AugmentPolicy()
    if preset in ("light", "erase"):
        erase = 0.5 if preset == "erase" else 0.0
        return AugmentPolicy(flip=flip_invariant, max_shift=1 / 14, integer_shift=True, erase=erase)
    return AugmentPolicy(flip=flip_invariant, max_shift=0.1, max_degrees=10.0, min_scale=0.8)


def augment_batch(x: torch.Tensor, policy: AugmentPolicy, generator: torch.Generator) -> torch.Tensor:
    """Apply `policy` to float images `x` [N, C, H, W]; randomness comes only from `generator`."""
    if not policy.active:
        return x
    if policy.active_geometry:
        x = _moved(x, policy, generator)
    return _erased(x, policy.erase, generator) if policy.erase > 0 else x


def _moved(x: torch.Tensor, policy: AugmentPolicy, generator: torch.Generator) -> torch.Tensor:
    """Each image through its own random affine map, one `grid_sample` for the batch."""
    n, _, h, w = x.shape

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    angle = uniform(-policy.max_degrees, policy.max_degrees) * (math.pi / 180)
    scale = uniform(policy.min_scale, 1.0)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if policy.flip else torch.ones(n)
    shift = torch.stack([uniform(-policy.max_shift, policy.max_shift) for _ in range(2)], dim=1)  # [N, 2]
    if policy.integer_shift:  # whole pixels; grid units are 2/side per pixel
        sides = torch.tensor([w, h], dtype=torch.float32)
        shift = torch.round(shift * sides) * 2 / sides
    else:
        shift = shift * 2
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )  # [N, 2, 3]: output grid -> input coordinates
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    mode = "nearest" if policy.integer_shift and policy.max_degrees == 0 else "bilinear"
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _erased(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """`x` with a black rectangle in each image drawn with probability `p` (2-33% of the area, aspect 0.3-3.3)."""
    n, _, h, w = x.shape
    area = (torch.rand(n, generator=generator) * 0.31 + 0.02) * h * w
    aspect = torch.exp(torch.rand(n, generator=generator) * math.log(3.3 / 0.3) + math.log(0.3))
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).floor()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).floor()
    drawn = torch.rand(n, generator=generator) < p
    rows = torch.arange(h, dtype=torch.float32)[None, :, None]
    cols = torch.arange(w, dtype=torch.float32)[None, None, :]
    box = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
           & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]))  # fmt: skip
    return x.masked_fill((box & drawn[:, None, None]).to(x.device)[:, None], 0.0)
