"""The pictures of `cnnlab explain`, drawn on matplotlib Figures outside pyplot (evaluate.plots.new_figure)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from cnnlab.figures import new_figure


def filters_figure(weight: torch.Tensor, title: str):
    """A conv layer's kernels [out, in, k, k] as a grid on one colour scale: RGB where the layer reads 3
    channels (scaled around grey = 0), otherwise grey (the mean over input channels, black..white = -m..m)."""
    w = weight.detach().float()
    m = float(w.abs().max()) or 1.0
    n = w.shape[0]
    cols = min(16, n)
    rows = -(-n // cols)
    fig = new_figure((cols * 0.6 + 0.4, rows * 0.6 + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        if w.shape[1] == 3:
            ax.imshow(((w[i] / (2 * m)) + 0.5).clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
        else:
            ax.imshow(w[i].mean(0).numpy(), cmap="gray", vmin=-m, vmax=m, interpolation="nearest")
    fig.suptitle(f"{title}: {n} kernels {w.shape[2]}x{w.shape[3]}, one scale (|w| <= {m:.3g})", fontsize=9)
    return fig


def feature_maps_figure(image: np.ndarray, maps: dict[str, torch.Tensor], *, per_layer: int = 8):
    """Per layer a row: the image (titled with the layer and its output shape), then up to `per_layer` of its
    channels, the most active first."""
    fig = new_figure((1.4 * (per_layer + 1), 1.5 * len(maps) + 0.3))
    axes = fig.subplots(len(maps), per_layer + 1, squeeze=False)
    for row, (name, act) in zip(axes, maps.items(), strict=True):
        _show_image(row[0], image)
        a = act[0]
        row[0].set_title(f"{name}\n{'x'.join(map(str, a.shape))}", fontsize=6)
        order = a.flatten(1).abs().mean(1).argsort(descending=True)[:per_layer]
        for ax, c in zip(row[1:], list(order) + [None] * per_layer, strict=False):
            ax.axis("off")
            if c is not None:
                ax.imshow(a[c].numpy(), cmap="viridis", interpolation="nearest")
                ax.set_title(f"#{int(c)}", fontsize=6)
    return fig


def attributions_figure(
    images: np.ndarray, maps: dict[str, np.ndarray], titles: Sequence[str], correct: Sequence[bool]
):
    """Rows of images; columns: the image, then each method's map overlaid on it (red = most evidence)."""
    n, methods = len(images), list(maps)
    fig = new_figure((1.7 * (len(methods) + 1), 1.8 * n + 0.3))
    axes = fig.subplots(n, len(methods) + 1, squeeze=False)
    for i in range(n):
        _show_image(axes[i][0], images[i])
        axes[i][0].set_title(titles[i], fontsize=7, color="green" if correct[i] else "red")
        for j, method in enumerate(methods, start=1):
            _show_image(axes[i][j], images[i], alpha=0.6)
            m = maps[method][i]
            span = float(np.abs(m).max()) or 1.0
            axes[i][j].imshow(np.clip(m / span, 0, 1), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if i == 0:
                axes[i][j].set_title(method.replace("_", " "), fontsize=7)
    return fig


def deletion_figure(fractions: Sequence[float], curves: dict[str, np.ndarray], areas: dict[str, float]):
    """Target-class probability as the top-attributed pixels are removed, per method, and random removal."""
    fig = new_figure((5.5, 3.8))
    ax = fig.subplots()
    x = 100 * np.asarray(fractions)
    for name, curve in curves.items():
        style = dict(color="black", linestyle="--") if name == "random" else {}
        ax.plot(x, curve, marker="o", markersize=3, label=f"{name} (area {areas[name]:.3f})", **style)
    ax.set_xlabel("pixels removed (%), most attributed first")
    ax.set_ylabel("mean probability of the class")
    ax.set_title("Deletion test: lower and sooner = the map found the evidence", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def embedding_figure(coords: np.ndarray, labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str],
                     method: str):  # fmt: skip
    """2-D embedding coloured by true class; misclassified points ringed in black."""
    fig = new_figure((7, 6))
    ax = fig.subplots()
    cmap = "tab10" if len(class_names) <= 10 else "tab20"
    ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap=cmap, s=5, vmin=0, vmax=max(len(class_names) - 1, 1))
    wrong = predicted != labels
    ax.scatter(coords[wrong, 0], coords[wrong, 1], facecolors="none", edgecolors="black", s=18, linewidths=0.6,
               label=f"misclassified ({int(wrong.sum())})")  # fmt: skip
    for k, name in enumerate(class_names):
        members = coords[labels == k]
        if len(members):
            cx, cy = np.median(members, axis=0)
            ax.annotate(name, (cx, cy), fontsize=8, weight="bold", ha="center")
    label = {"tsne": "t-SNE", "pca": "PCA"}.get(method, method)
    ax.set_title(f"{label} of the penultimate-layer features ({len(coords)} test images)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def _show_image(ax, image: np.ndarray, alpha: float = 1.0) -> None:
    """uint8 [C, H, W] as grey or RGB, axes off."""
    ax.axis("off")
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255, alpha=alpha)
    else:
        ax.imshow(np.transpose(image, (1, 2, 0)), alpha=alpha)


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, *, display: int = 224, alpha: float = 0.45):
    """`image` (uint8 [C, H, W]) with `heat` ([H, W], larger = more evidence) blended over it in the jet
    colour map, as a PIL image `display` px wide (small inputs enlarged without smoothing)."""
    from matplotlib import colormaps  # optional heavy import: matplotlib (drawing only)

    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image[:3]
    h = heat - heat.min()
    h = h / h.max() if h.max() > 0 else h
    colour = colormaps["jet"](h)[:, :, :3] * 255
    blend = ((1 - alpha) * rgb.transpose(1, 2, 0) + alpha * colour).clip(0, 255).astype(np.uint8)
    out = Image.fromarray(blend)
    scale = display / max(out.size)
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BICUBIC
    return out.resize((round(out.width * scale), round(out.height * scale)), resample)
