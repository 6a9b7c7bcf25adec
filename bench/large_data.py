"""Peak memory of the three commands a user types on a large photo folder, with default flags: `cnnlab train --data
folder:X`, `cnnlab predict RUN X` and `cnnlab audit --data folder:X`, each under GNU time.

The folder is made as bench/scale.py makes it (mixed-size JPEGs drawn from ../shared/data, 20 classes), or reused
with --folder. The stages share one data root, as a user's commands in one project do: the first decodes the photos
into the decoded-image cache, the others read it. The baseline (ratio) is the folder's decoded size at 224 px,
what holding it in memory would cost: a stage below 1.0 does not hold the folder. Prints one JSON line.

Usage: .venv/bin/python bench/large_data.py --photos 10000 --work /tmp/large10k [--folder DIR] [--stages train,...]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import scale  # bench/scale.py: the folder maker
from cnnlab.machine import CpuInfo


def timed(name: str, args: list[str], n: int, log: Path) -> dict:
    """One command under GNU time (bench/scale.py's stage): wall seconds, peak RSS, and the lines that say what it
    decided."""
    out = scale.stage(name, args, n, log)
    said = [
        line for line in log.read_text().splitlines() if line.startswith(("data path:", "model:", "Test Accuracy (O"))
    ]
    return {**out, "said": said}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--work", type=Path, required=True, help="folder for the photos, runs, data root and logs")
    parser.add_argument("--folder", type=Path, help="an existing photo folder (default: made under --work)")
    parser.add_argument("--stages", default="train,predict,audit")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    folder = args.folder or work / "photos"
    made_s = None
    if args.folder is None and not folder.is_dir():
        made_s = round(scale.make_folder(folder, args.photos), 1)
    n = sum(1 for _ in folder.rglob("*.jpg"))
    root, run = work / "root", work / "runs" / "large"
    commands = {
        "train": ["train", "--data", f"folder:{folder}", "--runs-dir", str(work / "runs"), "--name", "large",
                  "--data-root", str(root), "--force"],
        "predict": ["predict", str(run), str(folder), "--output", str(work / "predictions.csv"), "--force"],
        "audit": ["audit", "--data", f"folder:{folder}", "--output", str(work / "audit"), "--data-root", str(root),
                  "--force"],
    }  # fmt: skip
    stages = {s: timed(s, commands[s], n, work / f"{s}.log") for s in args.stages.split(",")}
    decoded_gb = n * 3 * 224 * 224 / 2**30
    cpu = CpuInfo.here()
    print(json.dumps({
        "bench": "large_data", "photos": n, "cpu": cpu.name, "capability": cpu.capability, "threads": os.cpu_count(),
        "folder_made_s": made_s, "decoded_224px_gb": round(decoded_gb, 2), "stages": stages,
        "peak_rss_over_decoded": {k: round(v["peak_rss_gb"] / decoded_gb, 3) for k, v in stages.items()},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
