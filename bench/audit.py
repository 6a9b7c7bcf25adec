"""What `cnnlab audit` costs on Fashion-MNIST subsets of 200, 2,000 and 60,000 images: the duplicate pass,
and the label/outlier checks with the backbone's features computed (a fresh cache) and then read from the
cache. One JSON line per size; `ratio` = cached / uncached time of the whole audit.

Usage: .venv/bin/python bench/audit.py [--sizes 200 2000 60000] [--no-labels-above N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cnnlab.audit import checks as A
from cnnlab.config import DataConfig
from cnnlab.data.sources import load_source
from cnnlab.data.splits import stratified_split
from cnnlab.machine import CpuInfo


def _subset(source, n: int):
    """`n` images stratified from the 70,000, split 60/20/20 like a folder without its own split."""
    labels = source.labels.numpy()
    _, idx = stratified_split(labels, np.arange(len(labels)), n / len(labels), seed=0)
    sub = type(source)(source.name, source.images[idx], source.labels[idx], source.class_names,
                       [source.ids[i] for i in idx], {"train": np.arange(len(idx))}, source.flip_invariant)  # fmt: skip
    rest, test = stratified_split(sub.labels.numpy(), np.arange(len(idx)), 0.2, seed=0)
    train, valid = stratified_split(sub.labels.numpy(), rest, 0.25, seed=1)
    return sub, {"train": train, "valid": valid, "test": test}


def _timed(source, splits, cache: Path, labels: bool) -> tuple[float, dict]:
    start = time.perf_counter()
    found = A.audit(source, splits, labels_too=labels, cache_dir=cache, log=lambda _: None)
    return time.perf_counter() - start, found.summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000, 60000])
    args = parser.parse_args()
    source = load_source(DataConfig(source="fashion-mnist"))
    cpu = CpuInfo.here()
    for n in args.sizes:
        sub, splits = _subset(source, n)
        with tempfile.TemporaryDirectory() as tmp:
            uncached, summary = _timed(sub, splits, Path(tmp), labels=True)
            cached, _ = _timed(sub, splits, Path(tmp), labels=True)
        print(json.dumps({
            "bench": "audit", "images": n, "cpu": cpu.name, "capability": cpu.capability,
            "threads": torch.get_num_threads(), "uncached_s": round(uncached, 1), "cached_s": round(cached, 1),
            "ratio": round(cached / uncached, 3), "parts_uncached_s": summary["seconds"], "counts": summary["counts"],
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
