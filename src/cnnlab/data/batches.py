"""The in-memory fast path: images live as one uint8 tensor on the device, batches are index slices.

Conversion to float, augmentation and normalisation happen on the whole batch; nothing per sample runs
in Python. The order of each epoch comes from (seed, epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.data.augment import AugmentPolicy, augment_batch
from cnnlab.data.loader import BatchReader


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]

    @classmethod
    def from_images(cls, images) -> Normalization:
        """Per-channel mean/std of uint8 images [N, C, H, W] (the training split's); streamed images are read
        in chunks, never all at once."""
        if isinstance(images, torch.Tensor):
            x = images.double() / 255.0
            mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
        else:
            mean, std = _chunked_mean_std(images)
        std = std.clamp_min(1e-3)
        return cls(tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std))

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] (or floats on the 0..1 scale) -> normalised float32, one multiply-add."""
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        scale = 1.0 / (255.0 * std) if images.dtype == torch.uint8 else 1.0 / std
        return (images.float() * scale).sub_(mean / std)  # broadcasts: grey images may meet RGB statistics


def _chunked_mean_std(images, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    s1 = s2 = 0.0
    n = 0
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].double() / 255.0
        s1 = s1 + x.sum(dim=(0, 2, 3))
        s2 = s2 + (x * x).sum(dim=(0, 2, 3))
        n += x.numel() // x.shape[1]
    mean = s1 / n
    return mean, ((s2 - n * mean * mean) / (n - 1)).clamp_min(0).sqrt()


class InMemoryBatches:
    """Batches of (normalised images, labels) for the subset `indices` of an in-memory source."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: np.ndarray,
        *,
        batch_size: int,
        norm: Normalization,
        shuffle: bool = False,
        policy: AugmentPolicy | None = None,
        seed: int = 0,
        drop_last: bool = False,
        max_batches: int | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        """Under DDP (`world` processes) each rank takes every world-th image of the shared epoch order and
        `batch_size` is its share of the global batch, so the union of the ranks' batches is the
        single-process batch."""
        self.images, self.labels = images, labels
        self.rank, self.world = rank, world
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.batch_size, self.norm, self.shuffle = batch_size, norm, shuffle
        self.policy = policy or AugmentPolicy()
        self.seed, self.max_batches = seed, max_batches
        # drop a ragged last batch in training (batch norm dislikes a batch of one), never in evaluation
        self.drop_last = drop_last and len(self.indices) // world > batch_size
        self.epoch = 0
        self.side: int | None = None  # None: the images' own size
        self.reader: BatchReader | None = None  # streamed images: made at the first epoch, kept for the next

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_flips(self, flips: bool) -> None:
        """Switch horizontal flips on or off (a folder's flip check decides after the first epoch)."""
        self.policy = replace(self.policy, flip=flips)

    def set_side(self, side: int | None) -> None:
        """Scale the batches to `side` x `side` px (training/progressive.py); None: as they are."""
        self.side = side

    def _share(self) -> int:
        """Images this rank takes per epoch: under DDP the same on every rank (training pads the epoch's order by
        wrapping around, as DistributedSampler does), so every rank takes the same number of steps."""
        n = len(self.indices)
        if self.world == 1:
            return n
        if self.drop_last or self.shuffle:
            return n // self.world if self.drop_last else -(-n // self.world)
        return len(self.indices[self.rank :: self.world])  # evaluation: no padding, no collective per batch

    def __len__(self) -> int:
        n = self._share()
        full = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return min(full, self.max_batches) if self.max_batches else full

    def _order(self) -> tuple[torch.Tensor, torch.Generator]:
        """This epoch's image order for this rank, and the generator of its augmentation draws."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = self.indices[torch.randperm(len(self.indices), generator=gen)] if self.shuffle else self.indices
        if self.world > 1:  # the same order on every rank, then this rank's share; its own augmentation draws
            share = self._share()
            if self.shuffle and not self.drop_last and share * self.world > len(order):
                order = torch.cat([order, order[: share * self.world - len(order)]])
            order = order[self.rank :: self.world][:share]
            gen = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 1_009 + self.rank)
        return order, gen

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, gen = self._order()
        batches = [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(len(self))]
        for idx, x in self._read(batches):
            x = x.to(self.labels.device, non_blocking=True)  # a no-op in memory; streamed batches arrive on the CPU
            if self.policy.active:  # on the 0..1 scale, so padding is black as in RandomCrop(padding)
                x = augment_batch(x.float() * (1 / 255), self.policy, gen)
            x = self.norm.apply(x)
            if self.side is not None and self.side != x.shape[-1]:  # after augmenting: shifts stay whole pixels
                x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True)
            yield x.contiguous(memory_format=torch.channels_last), self.labels[idx.to(self.labels.device)]

    def _read(self, batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, uint8 images) of each batch: index slices of the tensor in memory, or streamed images read
        ahead by DataLoader worker processes (data/loader.py)."""
        if isinstance(self.images, torch.Tensor):
            for idx in batches:
                yield idx, self.images[idx.to(self.images.device)]
            return
        if self.reader is None:
            self.reader = BatchReader(self.images, pin=self.labels.device.type == "cuda")
        yield from zip(batches, self.reader(batches), strict=True)


def run_batches(
    images: torch.Tensor, labels: torch.Tensor, splits: dict[str, np.ndarray], *, batch_size: int, norm: Normalization,
    policy: AugmentPolicy, seed: int, max_batches: int | None = None, rank: int = 0, world: int = 1,
) -> tuple[InMemoryBatches, InMemoryBatches]:  # fmt: skip
    """(train, valid) batches of a run: shuffled, augmented training batches of the global `batch_size` split
    over `world` processes (ragged last batch dropped), and validation batches of 1000 in order."""
    shard = {"rank": rank, "world": world}
    train = InMemoryBatches(
        images, labels, splits["train"], batch_size=batch_size // world, norm=norm, shuffle=True, policy=policy,
        seed=seed, drop_last=True, max_batches=max_batches, **shard,
    )  # fmt: skip
    valid = InMemoryBatches(
        images, labels, splits["valid"], batch_size=1000, norm=norm, max_batches=max_batches, **shard
    )
    return train, valid


DEFAULT_BATCH = 128
MIN_STEPS = 8  # per epoch: batch norm's running statistics need steps (one 128-batch per epoch left LFW at 55%)


def default_batch_size(n_train: int) -> tuple[int, str | None]:
    """128, or for a train split under MIN_STEPS batches of 128 the power of two (>= 16) giving about
    MIN_STEPS steps per epoch; returns (batch, why) with why None when it is the plain default.

    >>> default_batch_size(120)[0], default_batch_size(500)[0], default_batch_size(48_000)
    (16, 32, (128, None))
    """
    if n_train >= DEFAULT_BATCH * MIN_STEPS:
        return DEFAULT_BATCH, None
    batch = max(16, 2 ** int(math.log2(max(n_train // MIN_STEPS, 1))))
    return batch, f"{n_train} training images: about {max(n_train // batch, 1)} steps per epoch instead of " + (
        f"{max(n_train // DEFAULT_BATCH, 1)} at {DEFAULT_BATCH}"
    )
