"""The decoded-image cache as a folder grows: loading a photo folder at 224 px (as training decodes it for the
pretrained backbone) with an empty cache, again with the cache, and after --added files were copied in under new
names (with changed bytes, so they are new content). Before the per-file cache, a grown folder was decoded whole
again: the first load is that baseline, and the ratio is (load after adding) / (first load).

Each load runs in its own process (as each command does), timed whole, with its peak RSS. The folder is
bench/scale.py's unless --folder names one (it is changed: the added files are removed at the end). Prints one
JSON line.

Usage: .venv/bin/python bench/decode_cache.py --folder DIR [--added 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

from cnnlab.machine import CpuInfo

CHILD = """
import resource, sys, time
from cnnlab.config import DataConfig
from cnnlab.data.sources import load_source
start = time.perf_counter()
source = load_source(DataConfig(source="folder:" + sys.argv[1], root=sys.argv[2], image_size=224, crop_pct=0.875))
print(round(time.perf_counter() - start, 1), len(source.labels),
      round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))
"""


def load(folder: Path, root: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(root)], capture_output=True, text=True,
                          check=True)  # fmt: skip
    seconds, images, rss = done.stdout.split()
    return {"seconds": float(seconds), "images": int(images), "peak_rss_gb": float(rss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--added", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cnnlab-decode-"))
    first = load(args.folder, root)
    again = load(args.folder, root)
    classes = sorted(d for d in args.folder.iterdir() if d.is_dir())
    added = []
    for i, photo in enumerate(sorted(classes[0].glob("*.jpg"))[: args.added]):
        with Image.open(photo) as img:
            new = classes[0] / f"zz-added-{i:03d}.jpg"
            ImageOps.mirror(img.convert("RGB")).save(new, quality=90)
            added.append(new)
    try:
        grown = load(args.folder, root)
    finally:
        for path in added:
            path.unlink()
    cpu = CpuInfo.here()
    print(json.dumps({
        "bench": "decode_cache", "folder": str(args.folder), "side": 224, "first_load": first, "cached": again,
        f"after_adding_{args.added}": grown, "ratio_grown_vs_first": round(grown["seconds"] / first["seconds"], 3),
        "cache_gb": round(sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e9, 2),
        "cpu": cpu.name, "capability": cpu.capability, "threads": os.cpu_count(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
