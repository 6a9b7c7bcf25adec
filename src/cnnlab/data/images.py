"""Decoding image files into fixed-size uint8 tensors, the same way for training and prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


class UnreadableImage(Exception):
    """The file is missing, empty, truncated or not an image."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def decode_image(path: Path, *, size: int, channels: int, crop_pct: float = 1.0) -> tuple[torch.Tensor, bool]:
    """Read `path` as a `channels` x size x size uint8 tensor and say whether it was greyscale.

    Resizes the shorter side to `size / crop_pct` (bicubic, antialiased) and centre-crops `size`, so the
    aspect ratio is kept (ImageNet backbones: 256 -> 224 is crop_pct 0.875). Any mode (palette, 16-bit,
    alpha) is converted; `UnreadableImage` explains a bad file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            raise UnreadableImage("empty file (0 bytes)")
        with Image.open(path) as img:
            img.load()
            grey = img.mode in GREY_MODES
            img = img.convert("L" if channels == 1 else "RGB")
    except UnreadableImage:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    w, h = img.size
    scale = round(size / crop_pct) / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), grey
