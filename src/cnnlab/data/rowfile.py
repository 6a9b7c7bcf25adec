"""Arrays on disk as NumPy `.npy` files, written and read a block of rows at a time and never memory-mapped: every
page a map touches stays resident while it is mapped, so a pass over a 0.6 GB file would cost 0.6 GB of RSS
(loading the 20,000-photo folder through a map peaked at 6.4 GB for 3 GB of pixels: bench/decode_cache.py).
Plain reads go through the page cache and leave the process's memory at the block it asked for.

Used by the decoded-image shards (data/decoded.py) and the audit's backbone features (predict/features.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cnnlab.files import atomic_path

RUN_ROWS = 2048  # rows per read: about 300 MB of 224-px pixels (one read() moves at most 2 GB on Linux)


def read_header(f) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of the .npy file open at its start."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return shape, dtype, f.tell()


def is_whole(path: Path) -> bool:
    """The file exists and holds every byte its header promises (a copy cut short by a full disk does not)."""
    try:
        with open(path, "rb") as f:
            shape, dtype, offset = read_header(f)
        return Path(path).stat().st_size >= offset + int(np.prod(shape)) * dtype.itemsize
    except (OSError, ValueError):
        return False


def read_rows(path: Path, pos: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out[pos[k]] = row rows[k] of the .npy file at `path`, by reads of consecutive runs into `out` itself."""
    order = np.lexsort((pos, rows))  # by row: a file written in listing order reads in long runs
    pos, rows = pos[order], rows[order]
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(pos) != 1)) + 1
    with open(path, "rb") as f:
        shape, dtype, offset = read_header(f)
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        for run_pos, run_rows in zip(np.split(pos, breaks), np.split(rows, breaks), strict=True):
            for start in range(0, len(run_rows), RUN_ROWS):
                first, n = int(run_rows[start]), min(RUN_ROWS, len(run_rows) - start)
                target = memoryview(out[run_pos[start] : run_pos[start] + n]).cast("B")
                f.seek(offset + first * row_bytes)
                if f.readinto(target) != n * row_bytes:
                    raise OSError(f"{path} is shorter than its header says")


class RowFile:
    """A 2-D .npy file read by rows on demand, as a NumPy array is sliced: `f[a:b]` and `f[sorted_indices]` return
    arrays, `f.columns(a, b)` the same file seen through a block of its columns. Nothing is held between reads."""

    def __init__(self, path: Path, cols: slice | None = None) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            shape, self.dtype, _ = read_header(f)
        if len(shape) != 2:
            raise ValueError(f"{self.path} holds a {len(shape)}-D array; a RowFile reads 2-D rows")
        self.cols, self.width = cols, shape[1]  # the stored width; `shape` is what a read returns
        self.shape = (shape[0], len(range(*cols.indices(shape[1]))) if cols is not None else shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def columns(self, start: int, stop: int) -> RowFile:
        """The file's columns start..stop-1 (one level of a backbone's features)."""
        return RowFile(self.path, slice(start, stop))

    def __getitem__(self, key) -> np.ndarray:
        rows = np.asarray(range(len(self))[key] if isinstance(key, slice) else key, dtype=np.int64)
        out = np.empty((len(rows), self.width), dtype=self.dtype)
        if len(rows):
            read_rows(self.path, np.arange(len(rows)), rows, out)
        return out if self.cols is None else np.ascontiguousarray(out[:, self.cols])


@contextmanager
def row_writer(path: Path, rows: int) -> Iterator:
    """Write a [rows, width] .npy file a block of rows at a time: `write(block)` appends, in order; the header is
    written with the first block (its width and dtype). The file appears, atomically, only when every row is in."""
    written = [0]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:

        def write(block: np.ndarray) -> None:
            block = np.ascontiguousarray(block)
            if written[0] == 0:
                header = {"descr": np.lib.format.dtype_to_descr(block.dtype), "fortran_order": False,
                          "shape": (rows, *block.shape[1:])}  # fmt: skip
                np.lib.format.write_array_header_1_0(f, header)
            f.write(memoryview(block).cast("B"))
            written[0] += len(block)

        yield write
        if written[0] != rows:
            raise ValueError(f"{path}: {written[0]} rows written of the {rows} promised")
