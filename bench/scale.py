"""20,000 photos of mixed sizes through `cnnlab audit`, frozen-head training and `cnnlab predict`: seconds,
images/s and peak memory (RSS) per stage.

The folder is made here from the photo folders in ../shared/data (blood cells and Caltech objects, 20 classes):
each photo is drawn many times with a random crop (60-100% of the area, aspect 3:4 to 4:3), a random shorter side
of 160-640 px, a random mirror and a small brightness change, saved as JPEG (quality 90). The copies are
near-duplicates of their source photos by construction, so the audit's duplicate and leakage counts are large;
this benchmark is about speed and memory, not about those counts.

Each stage runs as its own process (the commands a user types) under GNU time, with a data root of its own, so
every stage pays for its own decoding and backbone pass (no cache shared between stages):
1. `cnnlab audit --data folder:X` (all checks: duplicates, degenerate images, labels, outliers);
2. `cnnlab train --data folder:X --model efficientnet_lite0 --strategy feature-extract` (one backbone pass, the
   head fit, evaluation and report);
3. `cnnlab predict RUN X --output predictions.csv` (every photo).

The baseline (ratio) is the decoded size of the whole folder at 224 px: a stage whose peak RSS stays below it
does not hold every decoded photo. Prints one JSON line.

Usage: .venv/bin/python bench/scale.py [--photos 20000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageEnhance

from cnnlab.machine import CpuInfo

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CNNLAB = str(Path(sys.executable).with_name("cnnlab"))


def sources() -> list[tuple[Path, str]]:
    found = []
    for folder in ("blood-cells", "caltech12"):
        for path in sorted((SHARED / folder).rglob("*")):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                found.append((path, f"{folder}-{path.parent.name}"))
    if not found:
        sys.exit(f"bench/scale.py: no photos under {SHARED} (the shared photo folders are needed)")
    return found


def draw(job: tuple[int, str, str, Path]) -> None:
    """One augmented copy of a source photo, at a random size, as JPEG."""
    seed, path, label, dest = job
    rng = random.Random(seed)
    with Image.open(path) as img:
        img = random_view(img.convert("RGB"), rng, shortest=(160, 640))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.85, 1.15))
    out = dest / label / f"{seed:06d}.jpg"
    img.save(out, quality=90)


def random_view(img: Image.Image, rng: random.Random, *, shortest: tuple[int, int]) -> Image.Image:
    """A random crop of 60-100% of the area (aspect 3:4 to 4:3), resized to a random shorter side in `shortest`,
    mirrored half the time."""
    w, h = img.size
    area, aspect = rng.uniform(0.6, 1.0) * w * h, rng.uniform(3 / 4, 4 / 3)
    cw, ch = min(w, round((area * aspect) ** 0.5)), min(h, round((area / aspect) ** 0.5))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x, y, x + cw, y + ch))
    scale = rng.randint(*shortest) / min(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def make_folder(dest: Path, n: int) -> float:
    photos = sources()
    for label in {label for _, label in photos}:
        (dest / label).mkdir(parents=True, exist_ok=True)
    jobs = [(i, photos[i % len(photos)][0], photos[i % len(photos)][1], dest) for i in range(n)]
    start = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(draw, jobs, chunksize=64))
    return time.perf_counter() - start


def stage(name: str, args: list[str], n: int, log: Path) -> dict:
    """One command under GNU time: its wall seconds, images/s and peak RSS."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", CNNLAB, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"bench/scale.py: {name} failed (exit {done.returncode}); see {log}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {
        "seconds": round(seconds, 1),
        "images_per_s": round(n / seconds, 1),
        "peak_rss_gb": round(rss_kb / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=20_000)
    parser.add_argument("--keep", type=Path, help="keep the folder, runs and logs here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cnnlab-scale-"))
    folder = work / "photos"
    made_s = make_folder(folder, args.photos)
    n = args.photos
    stages = {
        "audit": stage(
            "audit",
            [
                "audit",
                "--data",
                f"folder:{folder}",
                "--output",
                str(work / "audit"),
                "--data-root",
                str(work / "root-audit"),
            ],
            n,
            work / "audit.log",
        ),  # fmt: skip
        "train_frozen_head": stage(
            "train",
            [
                "train",
                "--data",
                f"folder:{folder}",
                "--model",
                "efficientnet_lite0",
                "--strategy",
                "feature-extract",
                "--runs-dir",
                str(work / "runs"),
                "--name",
                "scale",
                "--data-root",
                str(work / "root-train"),
            ],
            n,
            work / "train.log",
        ),  # fmt: skip
        "predict": stage(
            "predict",
            ["predict", str(work / "runs" / "scale"), str(folder), "--output", str(work / "predictions.csv")],
            n,
            work / "predict.log",
        ),  # fmt: skip
    }
    decoded_gb = n * 3 * 224 * 224 / 2**30
    test = json.loads((work / "runs" / "scale" / "eval.json").read_text())
    cpu = CpuInfo.here()
    print(json.dumps({
        "bench": "scale", "photos": n, "classes": len({p.parent.name for p in folder.rglob("*.jpg")}),
        "cpu": cpu.name, "capability": cpu.capability, "threads": os.cpu_count(), "folder_made_s": round(made_s, 1),
        "stages": stages, "decoded_224px_gb": round(decoded_gb, 2),
        "peak_rss_over_decoded": {k: round(v["peak_rss_gb"] / decoded_gb, 2) for k, v in stages.items()},
        "test_accuracy": test.get("accuracy"), "work": str(work) if args.keep else None,
    }))  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
