"""Image filters as the course teaches them: high-pass (edges) and low-pass (blur) kernels, applied with
OpenCV's filter2D and, identically, with a conv2d layer, with each result's frequency spectrum.

Both OpenCV and PyTorch compute cross-correlation (no kernel flip); both pad by reflection without
repeating the edge (OpenCV's BORDER_REFLECT_101 = PyTorch's "reflect"), so their outputs agree.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from sklearn.datasets import load_sample_image

from cnnlab.data.images import UnreadableImage
from cnnlab.errors import CnnlabError
from cnnlab.extras import require
from cnnlab.figures import new_figure
from cnnlab.files import save_figure_atomic
from cnnlab.runs import refuse_existing

KERNELS: dict[str, np.ndarray] = {
    # high-pass: weights sum to 0, so flat regions go to 0 and only changes remain
    "sobel-x": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32),
    "sobel-y": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float32),
    "laplacian": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32),
    # sharpen = identity + (negative) laplacian: sums to 1, keeps the image and boosts its edges
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float32),
    # low-pass: weights sum to 1, so brightness is kept and fine detail averaged away
    "box": np.full((5, 5), 1 / 25, dtype=np.float32),
    "gaussian": (np.outer(*(2 * [np.array([1, 4, 6, 4, 1], dtype=np.float32)])) / 256).astype(np.float32),
}


def parse_kernel(text: str) -> tuple[str, np.ndarray]:
    """A named kernel, or a custom matrix like `[[0,-1,0],[-1,4,-1],[0,-1,0]]` (odd, square)."""
    if text in KERNELS:
        return text, KERNELS[text]
    if text.strip().startswith("["):
        try:
            matrix = np.array(yaml.safe_load(text), dtype=np.float32)
        except (yaml.YAMLError, ValueError, TypeError):
            matrix = np.zeros(0)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] % 2 == 0:
            raise CnnlabError(
                f"kernel '{text}' must be a square matrix with an odd side, e.g. [[0,-1,0],[-1,4,-1],[0,-1,0]]"
            )
        return "custom", matrix
    raise CnnlabError(f"unknown kernel '{text}' (valid: {', '.join(KERNELS)}, or a matrix like [[1,0],[0,1]])")


def load_grey(path: Path | None) -> tuple[str, np.ndarray]:
    """A greyscale float32 image in [0, 1]; without a path, scikit-learn's bundled photo of China."""
    if path is None:
        rgb = load_sample_image("china.jpg").astype(np.float32) / 255
        return "china.jpg (scikit-learn sample)", rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    try:
        from PIL import Image  # optional heavy import: Pillow (reading the user's image only)

        if not Path(path).is_file():
            raise UnreadableImage("file not found")
        with Image.open(path) as img:
            return str(path), np.asarray(img.convert("L"), dtype=np.float32) / 255
    except (UnreadableImage, OSError) as exc:
        raise CnnlabError(f"cannot read image {path}: {exc} (pass a valid image file)") from exc


def filter_opencv(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    import cv2  # optional heavy import: OpenCV (Haar faces / filters, only here)

    return cv2.filter2D(image, ddepth=cv2.CV_32F, kernel=kernel, borderType=cv2.BORDER_REFLECT_101)


def filter_conv2d(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The same filter as a conv2d layer whose single weight is the kernel."""
    k = torch.from_numpy(kernel)[None, None]
    pad = kernel.shape[0] // 2
    x = F.pad(torch.from_numpy(image)[None, None], (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(x, k)[0, 0].numpy()


def log_spectrum(image: np.ndarray) -> np.ndarray:
    """log(1 + |FFT|), centred: low frequencies in the middle, high ones at the edges."""
    return np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(image))))


def filter_figure(image_name: str, image: np.ndarray, kernels: list[tuple[str, np.ndarray]], out: Path) -> float:
    """Write the figure (image and each filtered image over their spectra); return the largest
    OpenCV-vs-conv2d difference seen."""
    cols = 1 + len(kernels)
    fig = new_figure((3.2 * cols, 6.4))
    axes = fig.subplots(2, cols, squeeze=False)
    panels = [("original", image)]
    worst = 0.0
    for name, kernel in kernels:
        cv, tc = filter_opencv(image, kernel), filter_conv2d(image, kernel)
        worst = max(worst, float(np.abs(cv - tc).max()))
        panels.append((f"{name} (sum {kernel.sum():g})", cv))
    for j, (title, img) in enumerate(panels):
        axes[0, j].imshow(img, cmap="gray")
        axes[0, j].set_title(title, fontsize=9)
        axes[1, j].imshow(log_spectrum(img), cmap="magma")
        axes[1, j].set_title("log |FFT|", fontsize=9)
        for ax in axes[:, j]:
            ax.axis("off")
    fig.suptitle(f"{image_name}: filters and their frequency content", fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, out, dpi=90)
    return worst


def filters_command(image: Path | None, kernels: list[str] | None, output: Path, *, force: bool = False,
                    dry_run: bool = False, log: Callable[[str], None] = print) -> None:  # fmt: skip
    """`cnnlab filters`: the kernels (default Sobel x/y, Laplacian, Gaussian) on `image` (default a bundled
    photo), drawn to `output` with their spectra, OpenCV checked against conv2d."""
    require("cv2", purpose="cnnlab filters")
    parsed = [parse_kernel(k) for k in (kernels or ["sobel-x", "sobel-y", "laplacian", "gaussian"])]
    name, grey = load_grey(image)
    if dry_run:
        log(f"dry run ok: {name}, kernels {', '.join(k for k, _ in parsed)}")
        return
    refuse_existing(output, force=force)
    worst = filter_figure(name, grey, parsed, output)
    log(f"wrote {output} ({name}; OpenCV vs conv2d max difference {worst:.2e})")
