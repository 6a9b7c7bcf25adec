"""A user's own `torch.utils.data.Dataset` of (image, label) as a cnnlab source, `dataset:NAME`.

`register_dataset(ds, class_names)` names it for this Python process; every stage then loads it like any source
(data/sources.py: in memory or streamed, by its decoded size against the memory available). An image may be a PIL
image, a uint8 or 0..1 float tensor [C, H, W], or a uint8 array [H, W, C]; it is converted as a folder's files are
(shorter side resized, centre crop, grey or RGB). A run trained on one can be evaluated and explained in the same
process; another process must register the dataset again under the same name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from cnnlab.data.cache import cache_key
from cnnlab.data.images import fit_image
from cnnlab.errors import CnnlabError

PREFIX = "dataset:"
_REGISTERED: dict[str, tuple[Any, list[str]]] = {}


def register_dataset(dataset, class_names: list[str], *, name: str | None = None) -> str:
    """Name `dataset` (map-style: `len` and `[i] -> (image, label)`) for this process; returns its source string."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise CnnlabError(f"{type(dataset).__name__} is not a map-style Dataset (it needs __len__ and __getitem__)")
    if len(class_names) < 2:
        raise CnnlabError(f"a classifier needs at least two class names, got {list(class_names)}")
    name = name or type(dataset).__name__.lower()
    _REGISTERED[name] = (dataset, [str(c) for c in class_names])
    return PREFIX + name


def registered(name: str) -> tuple[Any, list[str]]:
    """The dataset and class names registered as `name` (a clear error where none is)."""
    if name not in _REGISTERED:
        raise CnnlabError(
            f"no Dataset is registered as '{name}' in this process (call "
            f"cnnlab.data.user_dataset.register_dataset(ds, class_names, name='{name}') first)"
        )
    return _REGISTERED[name]


def to_uint8(image, *, size: int, channels: int, crop_pct: float = 1.0) -> torch.Tensor:
    """One image as uint8 [channels, size, size], converted as a file is (images.fit_image): the shorter side
    resized to `size / crop_pct`, then a centre crop."""
    return torch.from_numpy(fit_image(as_pil(image), size=size, channels=channels, crop_pct=crop_pct))


def as_pil(image) -> Image.Image:
    """A PIL image, a uint8 or 0..1 float tensor [C, H, W] (or [H, W]), or a uint8 array [H, W, C] (or [H, W]) as
    a PIL image; anything else is one clear error."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dtype != torch.uint8:
            t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
        array = t.numpy().transpose(1, 2, 0) if t.ndim == 3 else t.numpy()
        image = np.ascontiguousarray(array)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise CnnlabError(f"an image array must be uint8 [H, W] or [H, W, C], got {image.dtype} {image.shape}")
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    if not isinstance(image, Image.Image):
        raise CnnlabError(f"an image is a {type(image).__name__} (give a PIL image, tensor or array)")
    return image


def first_image(dataset) -> tuple[int, int, int]:
    """(channels, width, height) of item 0: what the source's size and channels default to."""
    image = dataset[0][0]
    if not isinstance(image, Image.Image | torch.Tensor | np.ndarray):
        raise CnnlabError(f"a Dataset item's image is a {type(image).__name__} (give a PIL image, tensor or array)")
    if isinstance(image, Image.Image):
        return (1 if image.mode in ("1", "L", "I", "I;16", "F") else 3), *image.size
    shape = tuple(image.shape)
    if isinstance(image, torch.Tensor):  # [C, H, W]
        return (1 if shape[0] == 1 else 3), shape[2], shape[1]
    return (1 if len(shape) == 2 or shape[-1] == 1 else 3), shape[1], shape[0]  # [H, W, C]


def labels_of(dataset) -> torch.Tensor:
    """Every item's label: from `targets` where the Dataset has them (torchvision's do), else one pass over it."""
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)


class DatasetImages:
    """Items `positions` of a user Dataset, converted batch by batch (the streamed path's view of it)."""

    device = torch.device("cpu")
    dtype = torch.uint8

    def __init__(self, dataset, positions: list[int], *, size: int, channels: int, name: str) -> None:
        self.dataset, self.positions = dataset, list(positions)
        self.size, self.channels, self.name = size, channels, name

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.positions), self.channels, self.size, self.size)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, idx) -> torch.Tensor:
        chosen = self._chosen(idx)
        out = torch.empty(len(chosen), self.channels, self.size, self.size, dtype=torch.uint8)
        for k, i in enumerate(chosen):
            out[k] = to_uint8(self.dataset[i][0], size=self.size, channels=self.channels)
        return out[0] if isinstance(idx, int) else out

    def select(self, idx) -> DatasetImages:
        return DatasetImages(self.dataset, self._chosen(idx), size=self.size, channels=self.channels, name=self.name)

    def digest(self) -> str:
        """Identity for caches: the registered name, the items and the conversion (the pixels are not read)."""
        return cache_key("dataset-v1", self.name, len(self.dataset), self.positions, self.size, self.channels)

    def _chosen(self, idx) -> list[int]:
        if isinstance(idx, slice):
            return self.positions[idx]
        if isinstance(idx, int):
            return [self.positions[idx]]
        return [self.positions[int(i)] for i in np.asarray(torch.as_tensor(idx).cpu()).reshape(-1)]
