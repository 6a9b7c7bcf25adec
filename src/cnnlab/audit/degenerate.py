"""Degenerate images: decodable files that show nothing a label could be learned from.

Four kinds, each measured on the image as the run decodes it (grey levels 0-255, channels averaged):

- blank: near-constant (pixel standard deviation under BLANK_STD);
- stripes: every row (or every column) the same, the mark of an upstream resize or crop gone wrong (a public
  dermoscopy folder had 19% of these): the variance along one axis is under STRIPE_RATIO of the image's variance;
- flat: mostly one value (padding, black frames): at least FLAT_SHARE of the pixels within FLAT_TOLERANCE grey
  levels of the most common one, and FLAT_MARGIN more than the folder's median image (line drawings and digits
  are mostly background; in such a folder that is normal);
- blurred: the mean absolute Laplacian per unit of contrast under BLUR_SHARPNESS and under 1/BLUR_FACTOR of the
  folder's median image (relative too, so a folder of small images upscaled to the model's size is not all called
  blurred). Images over 2 x MEASURED_SIDE are averaged down first: 3.4 s -> 0.7 s for 960 photos at 224 px.

Thresholds were set on the real photo folders in ../shared/data (none of their images is called degenerate) and
planted degenerate images (bench/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BLANK_STD = 2.0  # grey levels
STRIPE_RATIO = 0.01  # of the image's variance, left along the stripes' axis
FLAT_SHARE, FLAT_TOLERANCE, FLAT_MARGIN = 0.95, 4, 0.25
BLUR_SHARPNESS, BLUR_FACTOR = 0.06, 3.0  # at 112 px: real photos here >= 0.118; blurred (6-8 px Gaussian) <= 0.037
BLOCK = 128  # images per vectorised pass (512 photos at 224 px held 0.4 GB of floats)
MEASURED_SIDE = 112  # px: larger images are averaged down to about this side first (4x fewer pixels at 224)
LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def image_statistics(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image: std, the variance ratios along rows and columns, the flat share and the sharpness. Written into
    arrays made up front: each block's small results kept between its freed temporaries kept glibc's heap from
    reusing them (a streamed 20,000-photo folder grew by 2 GB)."""
    out = {k: np.empty(len(images), dtype=np.float32) for k in ("std", "rows", "columns", "flat", "sharpness")}
    for start in range(0, len(images), BLOCK):
        grey = images[start : start + BLOCK].float().mean(1)  # [N, H, W]
        at = slice(start, start + len(grey))
        factor = min(grey.shape[1:]) // MEASURED_SIDE
        if factor > 1:  # measured at about MEASURED_SIDE px: the cost stays flat on 224-px photos
            grey = F.avg_pool2d(grey[:, None], factor)[:, 0]
        var = grey.flatten(1).var(1).clamp_min(1e-6)
        out["std"][at] = var.sqrt().numpy()
        out["rows"][at] = (grey.var(1).mean(1) / var).numpy()  # what changes down each column
        out["columns"][at] = (grey.var(2).mean(1) / var).numpy()  # what changes along each row
        levels = grey.round().long().clamp(0, 255).flatten(1)
        counts = torch.zeros(len(levels), 256).scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float32))
        window = F.conv1d(counts[:, None], torch.ones(1, 1, 2 * FLAT_TOLERANCE + 1), padding=FLAT_TOLERANCE)[:, 0]
        out["flat"][at] = (window.max(1).values / levels.shape[1]).numpy()
        edges = F.conv2d(grey[:, None], LAPLACE).abs().flatten(1).mean(1) if min(grey.shape[1:]) >= 3 else var * 0
        out["sharpness"][at] = (edges / var.sqrt()).numpy()
    return out


def degenerate_reasons(images: torch.Tensor) -> dict[int, tuple[str, float]]:
    """{image index: (reason, score)} for the degenerate images (score: how far past its threshold, for ranking)."""
    s = image_statistics(images)
    if len(s["std"]) == 0:
        return {}
    flat_median, sharp_median = float(np.median(s["flat"])), float(np.median(s["sharpness"]))
    found: dict[int, tuple[str, float]] = {}
    for i in range(len(s["std"])):
        if s["std"][i] < BLANK_STD:
            found[i] = (f"blank: near-constant (pixel std {s['std'][i]:.1f} of 255)", 1.0)
        elif min(s["rows"][i], s["columns"][i]) < STRIPE_RATIO:
            axis = "row" if s["rows"][i] < s["columns"][i] else "column"
            found[i] = (f"stripes: every {axis} the same (a failed resize or crop upstream)", 0.9)
        elif s["flat"][i] >= max(FLAT_SHARE, flat_median + FLAT_MARGIN):
            found[i] = (f"flat: {100 * s['flat'][i]:.0f}% of the pixels one value (padding or black)", 0.8)
        elif s["sharpness"][i] < min(BLUR_SHARPNESS, sharp_median / BLUR_FACTOR):
            found[i] = (f"blurred: {sharp_median / max(s['sharpness'][i], 1e-9):.0f}x less detail than the median "
                        "image", 0.7)  # fmt: skip
    return found
