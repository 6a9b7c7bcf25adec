"""An ensemble run's members scored alone on the run's own test images, beside the ensemble: the hindsight check
of issue 43 ("within 0.5 points of the best single candidate"), for a run whose search kept an ensemble.

Each member answers as it does inside the ensemble (its own normalisation of the 0..1 input), once plain and once
averaged with the mirror images (test-time flips, which the run's evaluation may have chosen); the ensemble is
scored the same two ways. Nothing is written to the run. Prints one JSON line.

Usage: .venv/bin/python bench/ensemble_members.py RUN
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from cnnlab.data.lazy import select
from cnnlab.data.sources import load_source
from cnnlab.data.splits import read_run_splits
from cnnlab.models.checkpoint import load_checkpoint
from cnnlab.models.registry import ENSEMBLE
from cnnlab.predict.infer import model_from_checkpoint, predict_logits
from cnnlab.runs import RunFile, open_run


class Member(nn.Module):
    """Member `i` of `ensemble` alone, on the ensemble's 0..1 input."""

    def __init__(self, ensemble: nn.Module, i: int):
        super().__init__()
        self.ensemble, self.i = ensemble, i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ensemble.members[self.i](self.ensemble._member_input(self.i, x))


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm) -> dict[str, float]:
    plain = torch.softmax(predict_logits(model, images, norm), 1)
    mirrored = torch.softmax(predict_logits(model, images, norm, mirror=True), 1)
    return {"plain": round(float((plain.argmax(1) == labels).float().mean()), 4),
            "flips": round(float(((plain + mirrored).argmax(1) == labels).float().mean()), 4)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    run = parser.parse_args().run
    config = open_run(run)
    if config.model.name != ENSEMBLE:
        raise SystemExit(f"{run} is not an ensemble run (model {config.model.name})")
    ckpt = load_checkpoint(run / RunFile.BEST)
    model = model_from_checkpoint(ckpt, run / RunFile.BEST).eval()
    source = load_source(config.data)
    test = read_run_splits(run / RunFile.SPLITS, source, needed=("test",)).splits["test"]
    images, labels = select(source.images, test), source.labels[torch.as_tensor(test)]
    norm = ckpt.preprocessing.normalization()
    out = {"run": str(run), "test_images": len(test), "ensemble": accuracy(model, images, labels, norm)}
    for i, member in enumerate(config.model.options["members"]):
        name = f"{member['name']} {member.get('strategy') or ''} (weight {member['weight']:.2f})"
        out[name] = accuracy(Member(model, i), images, labels, norm)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
