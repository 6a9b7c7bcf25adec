"""What the report's "Inside the model" section costs and finds: `write_report` of a default Fashion-MNIST
run with and without `cnnlab explain` (the baseline), timed in the same process, plus the deletion table
and the 2-D embedding's kNN accuracy. Prints one JSON line.

Uses --run RUN (e.g. the `make demo` run), else trains the default model on Fashion-MNIST for one epoch
first (explain's cost does not depend on how long the model trained). Usage:
.venv/bin/python bench/explain.py [--run runs/NAME]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from cnnlab.config import RunConfig, with_overrides
from cnnlab.machine import CpuInfo
from cnnlab.pipeline import train
from cnnlab.report.html import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path)
    args = parser.parse_args()
    run = args.run
    if run is None:
        cfg = with_overrides(with_overrides(RunConfig(), "data", source="fashion-mnist"), "train", epochs=1)
        run = train(cfg, runs_dir=Path(tempfile.mkdtemp()), name="f", log=lambda _: None, report=False).run_dir
    write_report(run, explain=False)  # warm: data loaded and decoded once
    start = time.perf_counter()
    write_report(run, explain=False)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    write_report(run, explain=True)
    with_s = time.perf_counter() - start
    result = json.loads((run / "explain" / "explain.json").read_text())
    cpu = CpuInfo.here()
    print(json.dumps({
        "bench": "explain", "run": str(run), "cpu": cpu.name, "capability": cpu.capability,
        "threads": torch.get_num_threads(), "report_s": round(plain_s, 1), "report_with_explain_s": round(with_s, 1),
        "explain_added_s": round(with_s - plain_s, 1), "ratio": round(with_s / plain_s, 2),
        "deletion_images": result["deletion"]["images"], "patch_px": result["deletion"]["patch_px"],
        "deletion_area": {m: round(a, 3) for m, a in result["deletion"]["areas"].items()},
        "drop_at_10pct": {m: round(a, 3) for m, a in result["deletion"]["drop_at_10pct"].items()},
        "embedding": result["embedding"],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
