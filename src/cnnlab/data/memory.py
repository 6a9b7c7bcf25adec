"""Whether a folder's decoded images are held in memory (the fast path) or streamed from the decoded-image cache on
disk, decided from their decoded size against the memory this machine (or container) has free.

A run holds more than the pixels: about 1.5 GB besides them (the libraries, the backbone's ONNX Runtime graph,
activations, features), and a default train on 10,000 photos held in memory peaked at 4x their decoded size (6.1 GB,
bench/RESULTS.md issue 41). So the pixels are held in memory only while they take at most IN_MEMORY_SHARE of the
memory available and at most IN_MEMORY_MOST bytes. Streaming costs no speed here: the rows are read from the cache
(from the page cache once read) at about 1,000 images/s in the training process, and a streamed Lite0 fine-tuning
epoch took 1.00x the in-memory one (bench/stream_epoch.py). About 6,600 photos at 224 px stay in memory; 10,000
(1.5 GB) and 100,000 (15 GB) are streamed. `--stream` / `--in-memory` force either.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

IN_MEMORY_SHARE = 0.15  # of the memory available: the most the decoded pixels may take to be held in memory
GB = 1e9
IN_MEMORY_MOST = 1 * GB  # bytes of decoded pixels held in memory at most, whatever the machine has free


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
    take at most IN_MEMORY_SHARE of `available` bytes (unknown: 8 GB assumed) and at most IN_MEMORY_MOST.

    >>> choose_stream(None, n_images=100_000, side=224, available=24 * 10**9)[0]
    True
    >>> [choose_stream(None, n_images=n, side=224, available=24 * 10**9)[0] for n in (6_000, 10_000)]
    [False, True]
    """
    if requested is not None:
        return requested, None
    size = decoded_bytes(n_images, side)
    room = IN_MEMORY_SHARE * (available if available is not None else 8 * GB)
    what = f"{n_images:,} images at {side} px are {size / GB:.2f} GB decoded"
    free = f"{available / GB:.1f} GB available" if available is not None else "8 GB assumed (free memory unknown)"
    if size <= min(room, IN_MEMORY_MOST):
        return False, (f"in memory: {what}, within {IN_MEMORY_SHARE:.0%} of the {free} and {IN_MEMORY_MOST / GB:.0f} "
                       "GB (--stream to stream)")  # fmt: skip
    over = (f"over {IN_MEMORY_SHARE:.0%} of the {free}" if size > room
            else f"over the {IN_MEMORY_MOST / GB:.0f} GB held in memory at most")  # fmt: skip
    return True, f"streamed from the decoded-image cache on disk: {what}, {over} (--in-memory to hold them)"


def loader_workers(cores: int | None = None) -> int:
    """DataLoader worker processes for streamed batches: none on two cores or fewer, where the training process
    reads each batch itself (a cached batch of 32 photos in about 30 ms beside a 1-s Lite0 step) because a worker
    took CPU from the step (one worker: 1.23x the in-memory epoch; none: 1.00x, bench/stream_epoch.py); beyond that
    one per two cores beyond the first, at most 4, so reading overlaps the step.

    >>> [loader_workers(c) for c in (1, 2, 4, 8, 64)]
    [0, 0, 1, 3, 4]
    """
    cores = cores or os.cpu_count() or 2
    return 0 if cores <= 2 else min(4, (cores - 1) // 2)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_ALLOCATION = 32 << 20  # bytes: allocations from this size are mapped, and unmapped when freed


def return_freed_memory() -> bool:
    """Make glibc hand large freed blocks back to the system at once (mallopt M_MMAP_THRESHOLD = 32 MB); returns
    whether it could (not glibc: no change). Batch after batch of large temporaries (a 64-photo batch as floats is
    38 MB) interleaved with small results kept (each batch's features) left glibc's heap unable to shrink: reading a
    streamed folder grew by 100 KB per photo, 0.9 GB per 10,000 (bench/RESULTS.md, issue 41); with this, flat. At
    1 MB every activation was mapped afresh each step: Fashion-MNIST's CNN trained 1.7x slower; at 32 MB its steps and
    Lite0's fine-tuning steps run as without it."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION))


def release_free_heap() -> None:
    """Hand the heap's free pages back to the system (glibc malloc_trim), between stages: decoding a folder's sample
    into memory left about 0.4 GB freed but resident, which every later stage's peak stood on."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt and malloc_trim are glibc's), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None
