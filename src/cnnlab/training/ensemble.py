"""Ensemble selection over the model search's measured candidates (Caruana et al., 2004, "Ensemble selection from
libraries of models"; what AutoGluon's weighted ensembles do), kept only when held-out evidence says it wins.

The library is every candidate that answered the validation images (the frozen family's chosen head, each trained
candidate's best epoch). Greedy forward selection with replacement adds, ROUNDS times, the candidate whose addition
lowers the averaged probabilities' log loss most (a smooth, proper score: accuracy on a few hundred images moves in
steps and stalls a greedy search); a candidate's weight is the share of rounds it was added in.

The weights are chosen on validation images, so scoring the ensemble on those same images would flatter it. Its evidence
is cross-fitted: the validation images are split into FOLDS folds, each fold scored by weights selected on the others,
and those out-of-fold answers are compared with the best single candidate on the same images, by the compared metric
(evidence.py: log loss, or with --positive that class's AUC). The ensemble is kept only when its gain exceeds one paired
standard error (at least evidence.MIN_MARGIN) and its weights (selected on all validation images) use two or more
members. The best single candidate is picked in hindsight on those images, so the comparison favours it, not the
ensemble.

`write_ensemble` makes the run's checkpoint: one model (models/ensemble.py) that predict, evaluate, export and serve
take as any other, its members and weights recorded in config.yaml (`model.options.members`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cnnlab.config import ModelConfig, RunConfig
from cnnlab.models import create_model
from cnnlab.models.checkpoint import Checkpoint, InputSpec, load_checkpoint, save_checkpoint
from cnnlab.models.registry import ENSEMBLE
from cnnlab.runs import RunFile
from cnnlab.training import evidence

ROUNDS = 20  # greedy additions (weights in steps of 5%)
FOLDS = 5  # cross-fitting folds over the validation images


@dataclass
class Selection:
    """The selected weights and the held-out evidence for keeping them."""

    weights: np.ndarray  # one per library member, summing to 1 (selected on all validation images)
    score: float  # the cross-fitted ensemble's score by the compared metric
    best_score: float  # the best single member's score on the same images
    best: int  # that member's index
    margin: float  # one paired standard error of the difference (at least evidence.MIN_MARGIN)
    positive_index: int | None = None  # the compared metric: None log loss (lower is better), else that class's AUC

    @property
    def gain(self) -> float:
        """How much better the cross-fitted ensemble scores than the best single member (positive: better)."""
        return evidence.gain(self.score, self.best_score, self.positive_index)

    @property
    def kept(self) -> bool:
        return int(np.count_nonzero(self.weights)) >= 2 and self.gain > self.margin

    def verdict(self, names: list[str], *, unaffordable: str | None = None) -> str:
        """One line: kept or not, the weights, the evidence; `unaffordable`: why a winning ensemble does not fit."""
        mix = " + ".join(f"{w:.2f} x {n}" for w, n in zip(self.weights, names, strict=True) if w > 0)
        gain = f"{self.score:.4f} cross-fitted vs {self.best_score:.4f}, gain {self.gain:+.4f} +- {self.margin:.4f}"
        if int(np.count_nonzero(self.weights)) < 2:
            return f"ensemble: not kept (selection used one member only: {mix}; {gain})"
        if self.kept and unaffordable:
            return f"ensemble: not kept, the budget is spent ({mix}; {gain}; {unaffordable})"
        return f"ensemble: {'kept' if self.kept else 'not kept'} ({mix}; {gain})"


def select_weights(probs: list[np.ndarray], labels: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """Greedy forward selection with replacement by log loss; each member's share of the `rounds` additions."""
    counts = np.zeros(len(probs))
    total = np.zeros_like(probs[0], dtype=np.float64)
    for r in range(rounds):
        losses = [evidence.log_loss((total + p) / (r + 1), labels) for p in probs]
        pick = int(np.argmin(losses))  # ties go to the earlier (cheaper) member
        counts[pick] += 1
        total += probs[pick]
    return counts / rounds


def combine(probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return sum(w * p for w, p in zip(weights, probs, strict=True))


def cross_fitted(probs: list[np.ndarray], labels: np.ndarray, *, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Each validation image answered by the ensemble whose weights were selected without it."""
    order = np.random.default_rng(seed).permutation(len(labels))
    out = np.zeros_like(probs[0], dtype=np.float64)
    for k in range(folds):
        held = order[k::folds]
        rest = np.setdiff1d(order, held)
        weights = select_weights([p[rest] for p in probs], labels[rest])
        out[held] = combine([p[held] for p in probs], weights)
    return out


def select(probs: list[np.ndarray], labels: np.ndarray, positive_index: int | None, *, seed: int = 0) -> Selection:
    """Weights over the library `probs` (each [valid images, classes]) and the cross-fitted evidence for them."""
    probs = [np.asarray(p, dtype=np.float64) for p in probs]
    scores = [evidence.score(p, labels, positive_index) for p in probs]
    best = evidence.best(scores, positive_index)
    folds = min(FOLDS, len(labels))
    held_out = cross_fitted(probs, labels, folds=folds, seed=seed)
    score = evidence.score(held_out, labels, positive_index)
    margin = evidence.tie_margin(held_out, probs[best], labels, positive_index, seed=seed)
    return Selection(select_weights(probs, labels), score, scores[best], best, margin, positive_index)


def write_ensemble(
    members: list[tuple[Path, float]], folder: Path, base: RunConfig, *, history_from: Path, valid_loss: float
) -> RunConfig:
    """best.pt (= last.pt: nothing to resume) in `folder` for the members' best.pt files with their weights (zero
    weights left out), metrics.csv from `history_from` (the trained member's curves); returns the run's config:
    `base` (a trained member's, its data decisions such as flips included) with the ensemble as its model."""
    members = [(path, w) for path, w in members if w > 0]
    ckpts = [load_checkpoint(path) for path, _ in members]
    first = ckpts[0].preprocessing
    records = [
        {"name": c.model_name, "strategy": c.strategy, "options": c.config.get("model", {}).get("options") or {},
         "mean": list(c.preprocessing.mean), "std": list(c.preprocessing.std), "weight": float(w)}
        for c, (_, w) in zip(ckpts, members, strict=True)
    ]  # fmt: skip
    config = replace(base, model=ModelConfig(name=ENSEMBLE, options={"members": records}))
    model = create_model(ENSEMBLE, num_classes=len(ckpts[0].class_names), in_channels=first.channels,
                         image_size=first.image_size, options=config.model.options)  # fmt: skip
    for net, ckpt in zip(model.members, ckpts, strict=True):
        net.load_state_dict(ckpt.weights)  # each member as its own run saved it
    # the decoded images' own channels: a grey folder's frozen ImageNet member carries RGB statistics, and a 0..1
    # input with three channels would reach its grey from-scratch partner as RGB (each member broadcasts its own)
    raw = InputSpec(first.image_size, first.channels, (0.0,) * first.channels, (1.0,) * first.channels,
                    first.crop_pct, first.resize)  # fmt: skip
    meta = Checkpoint(ENSEMBLE, list(ckpts[0].class_names), raw, config.to_dict())
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    best = {"best_loss": valid_loss, "best_epoch": 1, "bad_epochs": 0}  # the weights' in-sample validation loss
    for name in (RunFile.BEST, RunFile.LAST):
        save_checkpoint(meta.at(weights, epoch=1, best=best), folder / name)
    shutil.copy(history_from / RunFile.METRICS, folder / RunFile.METRICS)
    return config
