"""Small real image-folder datasets built from data that ships inside installed packages, so that the
folder and transfer-learning paths can be tried (and tested) offline.

- `lfw`: scikit-image's `lfw_subset()`, 100 face and 100 non-face 25x25 grey crops.
- `fashion`: a per-class subset of Fashion-MNIST as 28x28 PNGs.
Both are written as DEST/{train,valid,test}/<class>/<n>.png with a seeded stratified split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.config import DataConfig
from cnnlab.data.sources import load_source
from cnnlab.errors import CnnlabError, unknown_choice
from cnnlab.extras import require

SAMPLES = ("lfw", "fashion")


def write_sample_folder(name: str, dest: Path, *, per_class: int = 60, seed: int = 0) -> dict[str, int]:
    """Write sample dataset `name` into `dest` (which must not exist or be empty); returns images per split."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise CnnlabError(f"{dest} already exists and is not empty (choose a new folder; nothing was written)")
    if name == "lfw":
        require("skimage", purpose="the lfw sample")
        from skimage.data import lfw_subset  # optional heavy import: scikit-image (bundled photos, only here)

        images = (lfw_subset() * 255).round().astype(np.uint8)
        labels, classes = np.repeat([0, 1], 100), ["face", "non-face"]
    elif name == "fashion":
        images, labels, classes = _fashion_subset(per_class, seed)
    else:
        raise unknown_choice("sample dataset", name, SAMPLES)
    return _write_split(images, labels, classes, dest, seed)


def _fashion_subset(per_class: int, seed: int):
    source = load_source(DataConfig(source="fashion-mnist"))
    labels = source.labels.numpy()
    rng = np.random.default_rng(seed)
    pool = source.partitions["train"]
    picked = np.concatenate([rng.choice(pool[labels[pool] == c], per_class, replace=False) for c in range(10)])
    names = [c.replace("/", "-") for c in source.class_names]
    return source.images[picked, 0].numpy(), labels[picked], names


def _write_split(images, labels, classes, dest: Path, seed: int) -> dict[str, int]:
    """60% train, 20% valid, 20% test within each class."""
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "valid": 0, "test": 0}
    for c, cls in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train, n_valid = int(0.6 * len(idx)), int(0.2 * len(idx))
        parts = {"train": idx[:n_train], "valid": idx[n_train : n_train + n_valid], "test": idx[n_train + n_valid :]}
        for part, ix in parts.items():
            folder = dest / part / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in ix:
                Image.fromarray(images[i]).save(folder / f"{i}.png")
            counts[part] += len(ix)
    return counts
