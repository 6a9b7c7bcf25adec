"""Reader for the IDX format of MNIST-style datasets (gzipped or not)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Return the array stored in an IDX file; `.gz` files are decompressed on the fly."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise CnnlabError(f"cannot read IDX file {path}: {exc} (re-download or reinstall the dataset)") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise CnnlabError(f"{path} is not an IDX file (bad magic number; re-download the dataset)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=_DTYPES[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise CnnlabError(f"{path} is truncated: expected {shape}, found {array.size} values (re-download it)")
    return array.reshape(shape)
