"""The leak `--group-by` removes: a folder whose file names carry the source photo of each image (several crops per
photo, as a medical folder holds several images per patient), trained three ways on the same seed:

1. `--audit off`: a random split by image, the old behaviour (crops of one photo land in train and test);
2. the default: duplicates found before splitting are kept together (only the crops close enough to pass the
   audit's near-duplicate test);
3. `--group-by 'src(\\d+)_'`: every photo's crops in one split.

The folder is made here from ../shared/data (blood cells and Caltech objects, 20 classes): each photo gives
--crops random crops (60-100% of the area, shorter side 160-400 px, a random mirror), named
`<class>/src<photo>_<k>.jpg`. The model is the frozen EfficientNet-Lite0 head (`--model efficientnet_lite0
--strategy feature-extract`): the backbone's features are cached after the first run, so the three runs differ
only in their split. The baseline is run 1; the ratio is its test accuracy over the grouped run's. Also counted:
the test images whose source photo has crops in the training split. Prints one JSON line.

Usage: .venv/bin/python bench/groups.py [--crops 3] [--keep DIR]
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

from PIL import Image

from cnnlab.machine import CpuInfo

sys.path.insert(0, str(Path(__file__).parent))
from scale import random_view  # noqa: E402  (the crops bench/scale.py draws)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CNNLAB = str(Path(sys.executable).with_name("cnnlab"))
PATTERN = r"src(\d+)_"


def crop(job: tuple[int, int, Path, Path]) -> None:
    """One random crop of a source photo, named after the photo."""
    photo, k, path, dest = job
    rng = random.Random(photo * 1000 + k)
    with Image.open(path) as img:
        img = random_view(img.convert("RGB"), rng, shortest=(160, 400))
    img.save(dest / f"src{photo:04d}_{k}.jpg", quality=90)


def make_folder(dest: Path, crops: int) -> int:
    photos = []
    for folder in ("blood-cells", "caltech12"):
        for path in sorted((SHARED / folder).rglob("*")):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                photos.append((path, dest / f"{folder}-{path.parent.name}"))
    if not photos:
        sys.exit(f"bench/groups.py: no photos under {SHARED} (the shared photo folders are needed)")
    for _, label in photos:
        label.mkdir(parents=True, exist_ok=True)
    jobs = [(i, k, path, label) for i, (path, label) in enumerate(photos) for k in range(crops)]
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(crop, jobs, chunksize=32))
    return len(photos)


def train(folder: Path, work: Path, name: str, *extra: str) -> dict:
    args = [CNNLAB, "train", "--data", f"folder:{folder}", "--model", "efficientnet_lite0", "--strategy",
            "feature-extract", "--no-report", "--runs-dir", str(work / "runs"), "--name", name, "--data-root",
            str(work / "root"), *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    (work / f"{name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"bench/groups.py: {name} failed (exit {done.returncode}); see {work / f'{name}.log'}")
    run = work / "runs" / name
    result = json.loads((run / "eval.json").read_text())
    splits = json.loads((run / "splits.json").read_text())
    photo = {s: {re.search(PATTERN, k).group(1) for k in splits[s]} for s in ("train", "valid", "test")}
    shared = sum(re.search(PATTERN, k).group(1) in photo["train"] for k in splits["test"])
    return {
        "test_accuracy": round(result["accuracy"], 4), "n_test": result["n_test"],
        "test_images_whose_photo_is_in_train": shared, "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the folder, runs and logs here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cnnlab-groups-"))
    folder = work / "crops"
    photos = make_folder(folder, args.crops)
    runs = {
        "random_by_image": train(folder, work, "random", "--audit", "off"),
        "default_duplicates_kept_together": train(folder, work, "default"),
        "group_by_photo": train(folder, work, "grouped", "--group-by", PATTERN),
    }
    cpu = CpuInfo.here()
    grouped = runs["group_by_photo"]["test_accuracy"]
    print(json.dumps({
        "bench": "groups", "photos": photos, "crops_per_photo": args.crops, "images": photos * args.crops,
        "model": "efficientnet_lite0 feature-extract", "runs": runs,
        "ratio_random_vs_grouped": round(runs["random_by_image"]["test_accuracy"] / grouped, 4),
        "ratio_default_vs_grouped": round(runs["default_duplicates_kept_together"]["test_accuracy"] / grouped, 4),
        "cpu": cpu.name, "capability": cpu.capability, "threads": os.cpu_count(),
        "work": str(work) if args.keep else None,
    }))  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
