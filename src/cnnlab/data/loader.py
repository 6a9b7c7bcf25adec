"""Streamed batches through torch.utils.data: worker processes read each batch's rows (from the decoded-image cache,
a folder's files, or a user's Dataset) ahead of the training step, into pinned memory when a GPU trains.

The batches themselves are cut in the main process (data/batches.py: the same seeded order, rank share and
augmentation draws as the in-memory path), so streamed and in-memory training see the same batches. One batch is
one read: the sampler yields index tensors and the Dataset answers `images[idx]` (torchvision's references sample
image by image; a cached row is 150 KB, so a batch read in one call costs a fraction of the per-image overhead).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cnnlab.data.memory import loader_workers

PREFETCH = 2  # batches each worker reads ahead


class _Rows(Dataset):
    """`images[idx]` for a batch's index tensor `idx`."""

    def __init__(self, images) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx]


class _EpochBatches(Sampler):
    """The current epoch's index batches (set before each pass; persistent workers see the new order)."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchReader:
    """A DataLoader over streamed `images`, made once and iterated once per epoch over that epoch's batches."""

    def __init__(self, images, *, pin: bool = False, workers: int | None = None) -> None:
        self.sampler = _EpochBatches()
        workers = loader_workers() if workers is None else workers
        self.loader = DataLoader(
            _Rows(images), batch_size=None, sampler=self.sampler, num_workers=workers, pin_memory=pin,
            prefetch_factor=PREFETCH if workers else None, persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(0),  # workers' seeds from here: the global RNG (dropout) untouched
        )  # fmt: skip

    def __call__(self, batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The uint8 images of each of `batches`, in order."""
        self.sampler.batches = batches
        return iter(self.loader)
