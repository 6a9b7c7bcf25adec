"""What recording a folder's files by identity costs: fingerprinting every file (size + blake2b-64 of its bytes,
data/identity.py) on first sight and again from the cache, against the baseline of only reading the same bytes.

The folder is bench/scale.py's (mixed-size JPEGs drawn from ../shared/data), made here unless --folder names one.
Files are read from the page cache (each pass runs after a warm-up read), so the figures are CPU costs; a cold
disk adds its read time to the hash and the baseline alike. Prints one JSON line.

Usage: .venv/bin/python bench/identity.py [--photos 20000] [--folder DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cnnlab.data.identity import RACY_NS, READ_CHUNK, fingerprints
from cnnlab.machine import CpuInfo

sys.path.insert(0, str(Path(__file__).parent))
from scale import make_folder  # noqa: E402  (the same folder as the scale benchmark)


def read_all(paths: list[Path]) -> int:
    """The baseline: read every byte on the same thread pool, no hashing."""

    def size(path: Path) -> int:
        n = 0
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                n += len(chunk)
        return n

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return sum(pool.map(size, paths))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=20_000)
    parser.add_argument("--folder", type=Path, help="an existing folder of images (default: made here)")
    args = parser.parse_args()
    folder = args.folder
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="cnnlab-identity-")) / "photos"
        make_folder(folder, args.photos)
        time.sleep(RACY_NS / 1e9)  # files older than the racy window, as in a folder made earlier
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    n_bytes = read_all(paths)  # warm the page cache
    read_s = min(timed(lambda: read_all(paths)) for _ in range(3))
    with tempfile.TemporaryDirectory() as cache:
        first_s = timed(lambda: fingerprints(folder, paths, cache_dir=Path(cache)))
        cached_s = min(timed(lambda: fingerprints(folder, paths, cache_dir=Path(cache))) for _ in range(3))
    cpu = CpuInfo.here()
    print(json.dumps({
        "bench": "identity", "files": len(paths), "gb": round(n_bytes / 1e9, 2),
        "fingerprint_first_s": round(first_s, 2), "fingerprint_cached_s": round(cached_s, 2),
        "baseline_read_s": round(read_s, 2), "ratio_first_vs_read": round(first_s / read_s, 2),
        "ratio_cached_vs_read": round(cached_s / read_s, 2), "cpu": cpu.name, "capability": cpu.capability,
        "bf16": cpu.bf16, "threads": os.cpu_count(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
