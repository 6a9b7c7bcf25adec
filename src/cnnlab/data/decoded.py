"""Decoded images on disk, one row per file content: a folder is decoded once, and when it changes only the files
added or changed since are decoded again (the whole-folder cache it replaces was keyed by every file, so one added
photo re-decoded all 20,000).

Each decode setting (side, crop) has its own folder under `<data root>/cache/decoded/`: shards of raw uint8 pixels
[rows, 3, side, side] as NumPy `.npy` files, read with plain reads straight into the images' tensor, each with its
index `<shard>.json` from each file's fingerprint (data/identity.py: size and a digest of the bytes) to its row and
grey flag, or to why it could not be read. A decode pass writes its shard, then its index (both atomically, never
rewriting another's): a pass killed half-way costs only its own shard, and several processes (DDP ranks, two
commands on one folder) fill one cache at once. Identical files share a row. Raw pixels: 150 KB a photo at 224 px
(bench/RESULTS.md, issue 41: reading them beat decoding re-encoded JPEG shards).
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data.rowfile import is_whole, read_rows
from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_path, write_text_atomic


class DecodedCache:
    """The decoded rows of one (side, crop) setting, by fingerprint."""

    def __init__(self, root: Path, *, size: int, crop_pct: float) -> None:
        self.folder = Path(root) / "cache" / "decoded" / f"v3-{size}px-crop{crop_pct:g}"
        self.size = size
        self.rows: dict[str, dict[str, Any]] = {}
        self.held: dict[str, torch.Tensor] = {}  # shards that could not be written, kept in memory instead
        self.reload()

    def reload(self) -> None:
        """Read every pass's index again (another process may have added some)."""
        for part in sorted(self.folder.glob("shard-*.json")):
            try:
                rows = json.loads(part.read_text())["rows"]
            except (OSError, ValueError, KeyError, TypeError):  # unreadable: its files are decoded again
                continue
            if any("shard" in r for r in rows.values()) and not is_whole(part.with_suffix(".npy")):
                continue  # a deleted or cut shard's rows are decoded again
            self.rows |= rows

    def missing(self, fingerprints: list[str]) -> list[int]:
        """Positions of the files not decoded yet (the first of identical files only)."""
        seen, out = set(), []
        for i, fp in enumerate(fingerprints):
            if fp not in self.rows and fp not in seen:
                seen.add(fp)
                out.append(i)
        return out

    def add(self, fingerprints: list[str], decoded: dict[str, Any], *, rank: int = 0) -> bool:
        """Keep a decode pass: `decoded` is {images of the readable files, their grey flags, one error per file
        ("" when read)} for the files with `fingerprints`, by process `rank` (recorded). Returns whether it was
        written: a cache that cannot be written costs the reuse only (the pass's images are then held in memory for
        this command's reads)."""
        ok = [i for i, e in enumerate(decoded["errors"]) if not e]
        name = f"shard-{uuid.uuid4().hex[:12]}.npy"  # its index: the same name, .json
        fresh = {fingerprints[i]: {"error": e} for i, e in enumerate(decoded["errors"]) if e}
        fresh |= {fingerprints[i]: {"shard": name, "row": row, "grey": bool(decoded["grey"][row])}
                  for row, i in enumerate(ok)}  # fmt: skip
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if ok:
                with atomic_path(self.folder / name) as tmp:
                    np.save(tmp, decoded["images"].numpy())
            index = {"rows": fresh, "written_by": {"pid": os.getpid(), "rank": rank}}
            write_text_atomic((self.folder / name).with_suffix(".json"), json.dumps(index))
            self.rows |= fresh
            return True
        except OSError as exc:
            self.rows |= fresh  # this command still reads them, from the images it holds
            self.held[name] = decoded["images"]
            warnings.warn(f"cannot write the decoded-image cache in {self.folder} ({exc}); it is redone next time",
                          stacklevel=2)  # fmt: skip
            return False

    def entry(self, fingerprints: list[str]) -> dict[str, Any]:
        """{images uint8 [n, 3, side, side] of the readable files, grey flags, one error per file} for
        `fingerprints`, all of them decoded already."""
        errors = self.errors(fingerprints)
        ok = [fp for fp, e in zip(fingerprints, errors, strict=True) if not e]
        grey = torch.tensor([bool(self.rows[fp]["grey"]) for fp in ok], dtype=torch.bool)
        return {"images": self.read(ok), "grey": grey, "errors": errors}

    def errors(self, fingerprints: list[str]) -> list[str]:
        """Why each file could not be read ("" for a decoded one)."""
        return [self.rows[fp].get("error", "") for fp in fingerprints]

    def read(self, fingerprints: list[str], out: torch.Tensor | None = None) -> torch.Tensor:
        """The decoded rows of `fingerprints` (readable files only) as uint8 [n, 3, side, side], read from the shards
        into `out` (a new tensor by default): a batch costs its own rows, whatever the folder's size."""
        if out is None:
            out = torch.empty(len(fingerprints), 3, self.size, self.size, dtype=torch.uint8)
        by_shard: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for pos, fp in enumerate(fingerprints):
            row = self.rows[fp]
            by_shard[row["shard"]].append((pos, row["row"]))
        for shard, pairs in by_shard.items():
            pos, rows = (np.asarray(v, dtype=np.int64) for v in zip(*pairs, strict=True))
            if shard in self.held:
                out[torch.from_numpy(pos)] = self.held[shard][torch.from_numpy(rows)]
            else:
                read_rows(self.folder / shard, pos, rows, out.numpy())
        return out

    def __getstate__(self) -> dict[str, Any]:
        """What a DataLoader worker process receives: the index, not images held in memory (a cache that could not
        be written is read in the main process only)."""
        if self.held:
            raise CnnlabError(f"the decoded-image cache in {self.folder} could not be written; workers cannot read it")
        return self.__dict__
