"""Whether a folder's decoded images are held in memory (the fast path) or streamed from the decoded-image cache on
disk, decided from their decoded size against the memory this machine (or container) has free.

A run holds more than the pixels: a default train on 10,000 photos held in memory peaked at 4.1x their decoded size
(6.2 GB; 20,000 photos: 12 GB, bench/RESULTS.md issue 41), much of it fixed (the backbone's ONNX export, the search),
so the pixels may take at most IN_MEMORY_SHARE of the memory available, keeping such a peak near 60% of it. 10,000
photos at 224 px (1.5 GB) stay in memory on a 24 GB machine; 100,000 (15 GB) are streamed. `--stream` /
`--in-memory` force either.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

IN_MEMORY_SHARE = 0.15  # of the memory available: the most the decoded pixels may take to be held in memory
GB = 1e9


def decoded_bytes(n_images: int, side: int, channels: int = 3) -> int:
    """Bytes of `n_images` decoded as uint8 at `side` x `side` px."""
    return n_images * channels * side * side


def memory_available() -> int | None:
    """Bytes a new allocation can take without swapping: the kernel's MemAvailable, less where a cgroup (a
    container's limit) allows less; None where neither can be read (not Linux)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    limit = _cgroup_room()
    if limit is not None:
        found.append(limit)
    return min(found) if found else None


def _cgroup_room() -> int | None:
    """A cgroup v2 memory limit less its usage (None when unlimited or unreadable)."""
    folder = Path("/sys/fs/cgroup")
    try:
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((folder / "memory.current").read_text()), 0)
    except (OSError, ValueError):
        return None


def choose_stream(
    requested: bool | None, *, n_images: int, side: int, available: int | None
) -> tuple[bool, str | None]:  # fmt: skip
    """(stream, why): the user's --stream / --in-memory as given (why None), else in memory when the decoded pixels
    take at most IN_MEMORY_SHARE of `available` bytes (unknown: in memory up to 2 GB).

    >>> choose_stream(None, n_images=100_000, side=224, available=24 * 10**9)[0]
    True
    >>> choose_stream(None, n_images=10_000, side=224, available=24 * 10**9)[0]
    False
    """
    if requested is not None:
        return requested, None
    size = decoded_bytes(n_images, side)
    room = IN_MEMORY_SHARE * (available if available is not None else 8 * GB)
    what = f"{n_images:,} images at {side} px are {size / GB:.2f} GB decoded"
    free = f"{available / GB:.1f} GB available" if available is not None else "8 GB assumed (free memory unknown)"
    if size <= room:
        return False, f"in memory: {what}, within {IN_MEMORY_SHARE:.0%} of the {free} (--stream to stream)"
    return True, (f"streamed from the decoded-image cache on disk: {what}, over {IN_MEMORY_SHARE:.0%} of the {free} "
                  "(--in-memory to hold them)")  # fmt: skip


def loader_workers() -> int:
    """DataLoader worker processes for streamed batches: reading cached rows is light, so one per two cores beyond
    the first (the model's threads keep the rest), at least one so reading overlaps the step."""
    return max(1, min(4, ((os.cpu_count() or 2) - 1) // 2))


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_ALLOCATION = 32 << 20  # bytes: allocations from this size are mapped, and unmapped when freed


def return_freed_memory() -> bool:
    """Make glibc hand large freed blocks back to the system at once (mallopt M_MMAP_THRESHOLD = 32 MB); returns
    whether it could (not glibc: no change). Batch after batch of large temporaries (a 64-photo batch as floats is
    38 MB) interleaved with small results kept (each batch's features) left glibc's heap unable to shrink: reading a
    streamed folder grew by 100 KB per photo, 0.9 GB per 10,000 (bench/RESULTS.md, issue 41); with this, flat. At
    1 MB every activation was mapped afresh each step: Fashion-MNIST's CNN trained 1.7x slower; at 32 MB its steps and
    Lite0's fine-tuning steps run as without it."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION))
