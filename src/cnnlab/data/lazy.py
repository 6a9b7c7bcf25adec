"""The streamed path: images read batch by batch instead of held in memory (a folder larger than memory, or
`--stream`).

`CachedImages` (the streamed path) and `LazyImages` (its fallback where the decoded-image cache cannot be written:
each batch decoded from its files) look like the uint8 [N, C, H, W] tensor of the in-memory path wherever batches
are cut (`images[idx]`, `images[a:b]` read just those rows) and `select` makes a subset without reading, so a folder
larger than memory trains, evaluates and predicts through the same code (batches through a DataLoader:
data/loader.py).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.cache import cache_key, chunks_digest
from cnnlab.data.decoded import DecodedCache
from cnnlab.data.images import decode_image


class CachedImages:
    """Rows of the decoded-image cache (data/decoded.py) read on demand: memory holds a batch, never the folder."""

    device = torch.device("cpu")
    dtype = torch.uint8

    def __init__(self, cache: DecodedCache, fingerprints: list[str], *, channels: int) -> None:
        self.cache, self.fingerprints, self.channels = cache, list(fingerprints), channels

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.fingerprints), self.channels, self.cache.size, self.cache.size)

    def __len__(self) -> int:
        return len(self.fingerprints)

    def __getitem__(self, idx) -> torch.Tensor:
        """The images at `idx` (int, slice or index array) as a uint8 tensor, read from the cache's shards."""
        out = self.cache.read([self.fingerprints[i] for i in _positions(idx, len(self))])
        out = out[:, : self.channels] if self.channels < 3 else out
        return out[0] if isinstance(idx, int) else out

    def select(self, idx) -> CachedImages:
        return CachedImages(self.cache, [self.fingerprints[i] for i in _positions(idx, len(self))],
                            channels=self.channels)  # fmt: skip

    def digest(self) -> str:
        """Identity for caches: the files' contents (fingerprints) and the decode setting."""
        return cache_key("cached-v1", self.fingerprints, str(self.cache.folder.name), self.channels)


def _positions(idx, n: int) -> list[int]:
    if isinstance(idx, slice):
        return list(range(n))[idx]
    if isinstance(idx, int):
        return [idx]
    return [int(i) for i in np.asarray(torch.as_tensor(idx).cpu()).reshape(-1)]


class LazyImages:
    device = torch.device("cpu")
    dtype = torch.uint8

    def __init__(self, paths: list[Path], *, size: int, channels: int, crop_pct: float = 1.0) -> None:
        self.paths, self.size, self.channels, self.crop_pct = list(paths), size, channels, crop_pct
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, self.size, self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def _positions(self, idx) -> list[int]:
        return _positions(idx, len(self.paths))

    def __getstate__(self) -> dict:
        """For a DataLoader worker: everything but the thread pool (each process starts its own)."""
        return {k: v for k, v in self.__dict__.items() if k != "_pool"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)

    def __getitem__(self, idx) -> torch.Tensor:
        """Decode the images at `idx` (int, slice or index array) into a uint8 tensor."""
        paths = [self.paths[i] for i in self._positions(idx)]

        def decode(path: Path) -> torch.Tensor:
            return decode_image(path, size=self.size, channels=self.channels, crop_pct=self.crop_pct)[0]

        decoded = list(self._pool.map(decode, paths))
        out = (
            torch.stack(decoded) if decoded else torch.empty(0, self.channels, self.size, self.size, dtype=torch.uint8)
        )
        return out[0] if isinstance(idx, int) else out

    def select(self, idx) -> LazyImages:
        return LazyImages([self.paths[i] for i in self._positions(idx)], size=self.size, channels=self.channels,
                          crop_pct=self.crop_pct)  # fmt: skip

    def digest(self) -> str:
        """Identity for caches: every file's path, size and modification time, plus the decode settings."""
        stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in self.paths]
        return cache_key("lazy-v1", stats, self.size, self.channels, self.crop_pct)


class ImageRows:
    """Rows `idx` of an in-memory uint8 image tensor, not copied: batches are cut on demand (`rows[a:b]`), and
    the digest is `tensor_digest` of the copy, so feature caches keep their keys. A frozen head's feature pass
    over 12,800 photos at 224 px held a 1.9 GB copy of its split beside the decoded folder."""

    def __init__(self, images: torch.Tensor, idx) -> None:
        self.images, self.idx = images, torch.as_tensor(idx, dtype=torch.long)
        self.device, self.dtype = images.device, images.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.idx), *self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, key) -> torch.Tensor:
        return self.images[self.idx[key]]

    def digest(self) -> str:
        return chunks_digest(self.shape, (self[a : a + 256] for a in range(0, len(self), 256)))


def is_streamed(images) -> bool:
    """Whether `images` are read batch by batch (not one tensor in memory)."""
    return not isinstance(images, torch.Tensor) and hasattr(images, "select")  # CachedImages, LazyImages, a Dataset's


def row_view(images, idx):
    """`images[idx]` for a batch-by-batch pass: streamed images select their rows, a tensor is not copied."""
    return images.select(idx) if is_streamed(images) else ImageRows(images, idx)


def select(images, idx):
    """`images[idx]` without reading anything when `images` are streamed (the subset is read batch by batch)."""
    return images.select(idx) if is_streamed(images) else images[torch.as_tensor(idx)]


def take(images, idx) -> torch.Tensor:
    """`images[idx]` as a tensor in memory, streamed or not: for the few images a probe or a picture needs."""
    return images[torch.as_tensor(idx, dtype=torch.long)]
