"""Arrays on disk read a block of rows at a time (data/rowfile.py): what the decoded-image shards and the audit's
features are read through, so a pass over them never holds the file."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.data.rowfile import RowFile, is_whole, row_writer


def test_a_row_file_reads_as_the_array_it_was_written_from(tmp_path):
    array = np.random.default_rng(0).standard_normal((1000, 37)).astype(np.float32)
    with row_writer(tmp_path / "f.npy", len(array)) as write:
        for start in range(0, len(array), 300):  # blocks of uneven size, as a feature pass's last batch is
            write(array[start : start + 300])
    assert np.array_equal(np.load(tmp_path / "f.npy"), array)  # a plain .npy file
    rows = RowFile(tmp_path / "f.npy")
    assert rows.shape == (1000, 37) and len(rows) == 1000
    assert np.array_equal(rows[:], array) and np.array_equal(rows[250:260], array[250:260])
    picked = np.array([3, 4, 5, 700, 999])
    assert np.array_equal(rows[picked], array[picked])
    level = rows.columns(30, 37)
    assert level.shape == (1000, 7) and np.array_equal(level[picked], array[picked, 30:37])


def test_a_write_cut_short_leaves_no_file(tmp_path):
    path = tmp_path / "f.npy"
    with pytest.raises(ValueError, match="3 rows written of the 5"):
        with row_writer(path, 5) as write:
            write(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(RuntimeError):
        with row_writer(path, 5) as write:
            write(np.zeros((3, 4), dtype=np.float32))
            raise RuntimeError("the pass failed")
    assert not path.exists() and list(tmp_path.iterdir()) == []  # no partial file, no temporary left
    np.save(path, np.zeros((5, 4), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-16])  # a copy cut by a full disk
    assert not is_whole(path)
