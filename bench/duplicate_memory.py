"""Peak memory of the audit's exact candidate scoring (audit/checks.py `_candidate_similarities`) at 100,000 images,
against the whole-array expression it replaced, each in its own process. Prints one JSON line.

The near-duplicate search keeps CANDIDATES (8) per image and scores them on the 16x16 thumbnails (256 floats); the
old expression gathered every image's candidates at once (n x 8 x 256 floats, 0.8 GB at 100,000) and multiplied
them into as much again. Random unit vectors stand in for thumbnails: memory does not depend on their values.

Usage: .venv/bin/python bench/duplicate_memory.py [--images 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F

from cnnlab.audit.checks import CANDIDATES, THUMB, _candidate_similarities


def whole(full: torch.Tensor, crop: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The expression before: every image's candidates gathered and multiplied at once."""
    return torch.maximum(
        (full[:, None, :] * full[candidates]).sum(-1),
        torch.maximum((crop[:, None, :] * full[candidates]).sum(-1), (full[:, None, :] * crop[candidates]).sum(-1)),
    )


def measure(way: str, n: int) -> dict:
    """MiB the scoring adds to the process's peak (ru_maxrss), and a checksum of its result."""
    torch.manual_seed(0)
    full = F.normalize(torch.randn(n, THUMB * THUMB), dim=1)
    crop = F.normalize(torch.randn(n, THUMB * THUMB), dim=1)
    candidates = torch.randint(0, n, (n, CANDIDATES))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = (whole if way == "whole" else _candidate_similarities)(full, crop, candidates)
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"added_mib": round(added), "checksum": round(float(out.sum()), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--way", choices=["whole", "blocks"], help=argparse.SUPPRESS)  # one measurement, in-process
    args = parser.parse_args()
    if args.way:
        print(json.dumps(measure(args.way, args.images)))
        return
    result = {"images": args.images}
    for way in ("whole", "blocks"):
        out = subprocess.run([sys.executable, __file__, "--images", str(args.images), "--way", way],
                             capture_output=True, text=True, check=True)  # fmt: skip
        result[way] = json.loads(out.stdout)
    result["same_result"] = result["whole"]["checksum"] == result["blocks"]["checksum"]
    result["blocks_over_whole"] = round(result["blocks"]["added_mib"] / result["whole"]["added_mib"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
