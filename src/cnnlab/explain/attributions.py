"""Per-pixel attributions through captum, and the deletion test that says which of them to trust.

Every method returns one map per image [N, H, W] at the input's resolution, where larger means "more
evidence for the target class":
- saliency: |d logit / d pixel| (Simonyan et al.), summed over channels;
- smoothgrad: saliency averaged over noisy copies of the image (Smilkov et al.);
- integrated_gradients: gradients integrated from the dataset mean (0 after normalisation) to the image;
- gradcam: Grad-CAM on the last conv stage (Selvaraju et al.), upsampled bilinearly to the input;
- occlusion: the drop in the logit when a window of pixels is set to the mean (Zeiler and Fergus).

Deletion test (Petsiuk et al.'s RISE paper): remove the top k% of the image by a map (squares of size/14 px
set to the dataset mean), watch the target-class probability fall; a map that finds the evidence makes it
fall faster than removing random squares. The area under that curve (lower is better) is printed per method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from cnnlab.errors import CnnlabError

METHODS = ("saliency", "smoothgrad", "integrated_gradients", "gradcam", "occlusion")
FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)  # shares of pixels removed in the deletion test


@dataclass(frozen=True)
class Settings:
    """Per-method knobs; `for_size` picks defaults that keep a CPU run short at any input size."""

    ig_steps: int = 32
    smoothgrad_samples: int = 16
    smoothgrad_noise: float = 0.15  # standard deviation as a share of the input's range
    occlusion_window: int = 4
    occlusion_stride: int = 2
    batch: int = 64

    @classmethod
    def for_size(cls, size: int, *, ig_steps: int | None = None, window: int | None = None,
                 stride: int | None = None) -> Settings:  # fmt: skip
        w = window or max(2, size // 7)
        return cls(
            ig_steps=ig_steps or (32 if size <= 64 else 16),
            smoothgrad_samples=16 if size <= 64 else 8,
            occlusion_window=w,
            occlusion_stride=stride or w,  # a 7x7 grid of windows, Grad-CAM's resolution; half-window strides
            # cost 3.4x the time (15 s for 200 Fashion-MNIST images) for a smoother map
            batch=64 if size <= 64 else 4,  # 4 photos at 224 px with gradients: +0.3 GB, as fast as 8
        )


def check_methods(methods: list[str] | None) -> list[str]:
    """The methods asked for (default all); an unknown one lists the valid names."""
    chosen = list(methods or METHODS)
    for m in chosen:
        if m not in METHODS:
            raise CnnlabError(f"unknown attribution method '{m}' (choose from: {', '.join(METHODS)})")
    return chosen


def attribute(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str, *, layer: nn.Module | None, settings: Settings
) -> torch.Tensor:
    """Maps [N, H, W] of `method` for images `x` (normalised) and target classes `target`, batch by batch."""
    out = [
        _attribute(model, x[i : i + settings.batch], target[i : i + settings.batch], method, layer, settings)
        for i in range(0, len(x), settings.batch)
    ]
    return torch.cat(out).detach()


def _attribute(model, x, target, method, layer, s: Settings) -> torch.Tensor:
    from captum.attr import (  # optional heavy import: captum (attributions only)
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )  # fmt: skip

    if method == "gradcam":
        # gradients are needed at the layer only: an input that requires them made autograd keep every activation
        # below it (8 photos at 224 px through Lite0: +1.1 GB resident, for the same maps)
        cam = LayerGradCam(model, layer).attribute(x.detach(), target=target, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    x = x.detach().clone().requires_grad_(method != "occlusion")
    if method == "saliency":
        return Saliency(model).attribute(x, target=target, abs=True).sum(1)
    if method == "smoothgrad":
        noise = s.smoothgrad_noise * float(x.detach().max() - x.detach().min())
        # noisy copies in passes of at most `s.batch` images: all at once, 8 photos x 8 copies at 224 px through
        # a backbone's backward pass held most of the 6.6 GB `cnnlab explain` peaked at
        per_pass = max(1, s.batch // len(x))
        maps = NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=s.smoothgrad_samples, nt_samples_batch_size=per_pass, stdevs=noise,
            target=target, abs=True,
        )  # fmt: skip
        return maps.sum(1)
    if method == "integrated_gradients":
        ig = IntegratedGradients(model)
        return ig.attribute(x, baselines=0.0, target=target, n_steps=s.ig_steps, internal_batch_size=s.batch).sum(1)
    if method == "occlusion":
        # the window and stride fit the images as stored (a backbone run on 8-px digits resizes them inside)
        c, w = x.shape[1], min(s.occlusion_window, x.shape[-1], x.shape[-2])
        st = min(s.occlusion_stride, w)
        with torch.no_grad():  # perturbation only: no gradients needed
            maps = Occlusion(model).attribute(
                x, sliding_window_shapes=(c, w, w), strides=(c, st, st), baselines=0.0, target=target,
                perturbations_per_eval=max(1, s.batch // len(x)),  # at most s.batch images per forward pass (8
                # photos x 8 windows at 224 px were 64 images at once: +0.6 GB)
            )  # fmt: skip
        return maps.sum(1)
    raise CnnlabError(f"unknown attribution method '{method}' (choose from: {', '.join(METHODS)})")


def deletion_curve(
    model: nn.Module, x: torch.Tensor, maps: torch.Tensor | None, target: torch.Tensor, *, patch: int = 1,
    seed: int = 0, fractions: tuple[float, ...] = FRACTIONS, batch: int = 256, fill: str = "mean",
) -> np.ndarray:  # fmt: skip
    """Mean target-class probability after removing the top `fractions` of `patch` x `patch` squares, ranked
    by their mean attribution in `maps` (None: in a random order, seeded), set to 0 (`fill` mean: the
    dataset mean after normalisation) or to a blurred copy of the image (`fill` blur) in every channel.
    Ties (a map that is flat somewhere) are broken at random."""
    n, _, h, w = x.shape
    gh, gw = h // patch, w // patch
    noise = torch.from_numpy(np.random.default_rng(seed).random((n, gh * gw))).float()
    if maps is None:
        score = noise
    else:
        pooled = F.avg_pool2d(maps[:, None, : gh * patch, : gw * patch].float(), patch).reshape(n, -1)
        score = pooled + 1e-6 * noise * (pooled.abs().amax(1, keepdim=True) + 1e-12)
    order = score.argsort(1, descending=True)  # most evidence first
    canvas = blurred(x) if fill == "blur" else torch.zeros_like(x)
    curve = []
    with torch.no_grad():
        for f in fractions:
            keep = torch.ones(n, gh * gw)
            keep.scatter_(1, order[:, : int(round(f * gh * gw))], 0.0)
            mask = torch.ones(n, 1, h, w)
            mask[:, :, : gh * patch, : gw * patch] = F.interpolate(keep.view(n, 1, gh, gw), scale_factor=patch)
            damaged = x * mask + canvas * (1 - mask)
            probs = torch.cat([model(damaged[i : i + batch]).softmax(1) for i in range(0, n, batch)])
            curve.append(float(probs.gather(1, target.view(-1, 1)).mean()))
    return np.asarray(curve)


FILLS = ("mean", "blur")


def blurred(x: torch.Tensor) -> torch.Tensor:
    """A Gaussian-blurred copy (sigma = size/22 px): the canvas of RISE's insertion test, whose removed squares
    keep the image's colours and coarse shapes instead of punching grey holes in it."""
    sigma = max(0.5, x.shape[-1] / 22)
    return gaussian_blur(x, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)


def deletion_patch(size: int) -> int:
    """Squares of size/14 px (2 px at 28, 16 px at 224): removing single random pixels acts as salt noise,
    which hurts a CNN more than removing any real evidence does, so pixel-level random removal "beats" even
    good maps (measured: bench/RESULTS.md). Maps and random removal use the same squares."""
    return max(1, size // 14)


def deletion_area(curve: np.ndarray, fractions: tuple[float, ...] = FRACTIONS) -> float:
    """Area under a deletion curve over the removed share, divided by its span: the mean probability left
    while pixels are removed (lower: the map found the evidence sooner)."""
    f = np.asarray(fractions)
    return float(np.trapezoid(curve, f) / (f[-1] - f[0]))
