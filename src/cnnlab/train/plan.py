"""Run settings read off the data when the user gave none: a folder's image size (chosen in `sources`), whether
flips keep labels (known for datasets; folders: measured during training, see engine/flips.py), and a batch
size that gives a small train split enough steps per epoch. Each is printed and recorded with its reason."""

from __future__ import annotations

import math
from dataclasses import replace

from cnnlab.config import RunConfig, with_decisions
from cnnlab.data.sources import Source


def data_decisions(config: RunConfig, source: Source, n_train: int, log) -> RunConfig:
    """Fix what was read off the data (a folder's image size, whether flips keep labels, the batch size for a
    small train split) into the config."""
    if source.size_reason is not None:
        log(f"image size: {source.image_size} px ({source.size_reason})")
        config = replace(config, data=replace(config.data, image_size=source.image_size))
        config = with_decisions(config, image_size=source.size_reason)
    if config.data.flips is None and source.flip_invariant is not None:
        config = replace(config, data=replace(config.data, flips=source.flip_invariant))
    if config.train.batch_size is None:
        batch, why = default_batch_size(n_train)
        config = replace(config, train=replace(config.train, batch_size=batch))
        if why:
            log(f"batch size: {batch} ({why})")
            config = with_decisions(config, batch_size=why)
    return config


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
