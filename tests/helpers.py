"""Test helpers: real images (scikit-learn's digits) written as an image folder; data availability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def fashion_available() -> bool:
    return (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file() or Path("data/FashionMNIST/raw").is_dir()


needs_fashion = pytest.mark.skipif(not fashion_available(), reason="Fashion-MNIST files absent (run `make data`)")


def write_digit_folder(root: Path, *, classes=(0, 1, 2), per_class: int = 20, size: int = 32, mode: str = "L") -> Path:
    """An ImageFolder of real handwritten digits (sklearn's 8x8 scans, upscaled) as PNG files."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for cls in classes:
        folder = root / f"digit{cls}"
        folder.mkdir(parents=True, exist_ok=True)
        members = np.flatnonzero(digits.target == cls)[:per_class]
        for i, idx in enumerate(members):
            pixels = (digits.images[idx] * (255 / 16)).astype(np.uint8)
            img = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.NEAREST)
            img.convert(mode).save(folder / f"{i:03d}.png")
    return root
