"""Raw pixels or re-encoded JPEG for the decoded-image cache: disk per photo and images/s a reader delivers.

--photos images of a folder are decoded once at 224 px (resize 256, centre crop, as a backbone reads them). Then:
- raw: the rows in one .npy shard (what data/decoded.py writes), training batches of 32 read at random positions
  with plain reads (`read_rows`);
- jpeg: each row re-encoded as JPEG (quality 90, as bench/scale.py saves photos; 4:2:0), the same batches decoded
  from the bytes with Pillow.
One thread each, the files in the page cache (a second epoch). The baseline is the raw reader: the ratio says how
much slower re-encoded rows are to read, against how much less disk they take. Prints one JSON line.

Usage: .venv/bin/python bench/shard_format.py --folder DIR [--photos 2000]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data.images import decode_array, is_image_file
from cnnlab.data.rowfile import read_rows
from cnnlab.machine import CpuInfo

BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--photos", type=int, default=2000)
    args = parser.parse_args()
    files = sorted(p for p in args.folder.rglob("*") if is_image_file(p))[: args.photos]
    rows = np.stack([decode_array(p, size=224, channels=3, crop_pct=0.875)[0] for p in files])
    encoded = []
    for row in rows:
        buf = io.BytesIO()
        Image.fromarray(row.transpose(1, 2, 0)).save(buf, format="JPEG", quality=90)
        encoded.append(buf.getvalue())
    order = np.random.default_rng(0).permutation(len(rows))
    batches = [order[a : a + BATCH] for a in range(0, len(order) - BATCH + 1, BATCH)]
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "shard.npy"
        np.save(shard, rows)
        out = np.empty((BATCH, *rows.shape[1:]), dtype=np.uint8)
        start = time.perf_counter()
        for idx in batches:
            read_rows(shard, np.arange(len(idx)), idx, out)
        raw_rate = len(batches) * BATCH / (time.perf_counter() - start)
        raw_bytes = shard.stat().st_size
    start = time.perf_counter()
    for idx in batches:
        np.stack([np.asarray(Image.open(io.BytesIO(encoded[i])).convert("RGB")) for i in idx])
    jpeg_rate = len(batches) * BATCH / (time.perf_counter() - start)
    cpu = CpuInfo.here()
    back = np.stack([np.asarray(Image.open(io.BytesIO(b))).transpose(2, 0, 1) for b in encoded[:200]])
    psnr = _psnr(rows[:200], back)
    print(json.dumps({
        "bench": "shard_format", "photos": len(rows), "cpu": cpu.name, "capability": cpu.capability, "threads": 1,
        "raw_kb_per_photo": round(raw_bytes / len(rows) / 1024, 1),
        "jpeg_kb_per_photo": round(sum(map(len, encoded)) / len(rows) / 1024, 1),
        "raw_images_per_s": round(raw_rate), "jpeg_images_per_s": round(jpeg_rate),
        "ratio_jpeg_over_raw_speed": round(jpeg_rate / raw_rate, 3), "jpeg_psnr_db": round(psnr, 1),
    }))  # fmt: skip


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-12))


if __name__ == "__main__":
    main()
