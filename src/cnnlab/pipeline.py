"""`train` and `resume`: config -> data -> model -> fit -> evaluate, all in one run folder.

This is the Python API the CLI wraps: `cnnlab.pipeline.train(RunConfig(...))`.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cnnlab.config import RunConfig, save_config
from cnnlab.data.augment import policy_for
from cnnlab.data.batches import InMemoryBatches, Normalization
from cnnlab.data.sources import Source, load_source
from cnnlab.data.splits import load_splits, make_splits, save_splits
from cnnlab.engine.checkpoint import check_compatible, load_checkpoint
from cnnlab.engine.fit import EpochStats, fit, make_fabric
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.evaluate import evaluate_run
from cnnlab.evaluate.thresholds import parse_rule
from cnnlab.models import create_model, describe_model
from cnnlab.runfolder import claim_run_dir, creating_run_dir, default_run_name, open_run


@dataclass
class TrainResult:
    run_dir: Path | None  # None for a dry run
    history: list[EpochStats]
    evaluation: dict[str, Any]


def train(
    config: RunConfig,
    *,
    runs_dir: Path = Path("runs"),
    name: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    positive: str | None = None,
    rule: str = "sensitivity:0.95",
    report: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `config` into `runs_dir/name`, then evaluate the best checkpoint on the test split.

    Every input is checked before the run folder is created; a failure before the first saved epoch
    removes the folder. `dry_run` trains and scores one batch in a temporary folder.
    """
    describe_model(config.model.name)  # an unknown model fails before any data is read
    parse_rule(rule)
    source = _load(config, log)
    if positive is not None and positive not in source.class_names:
        raise CnnlabError(f"unknown positive class '{positive}' (classes: {', '.join(source.class_names)})")
    splits = make_splits(
        source.labels.numpy(), source.partitions, valid_fraction=config.data.valid_fraction,
        test_fraction=config.data.test_fraction, seed=config.train.seed, train_limit=config.data.train_limit,
    )  # fmt: skip
    log(f"data: {source.name}, {len(source.class_names)} classes, {source.channels}x{source.image_size}px; "
        f"train {len(splits['train'])} / valid {len(splits['valid'])} / test {len(splits['test'])}")  # fmt: skip
    if dry_run:
        config = replace(config, train=replace(config.train, epochs=1))
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "dry-run"
            history = _fit_new(config, source, splits, run_dir, max_batches=1, log=log)
            evaluation = evaluate_run(run_dir, source=source, dry_run=True, log=log)
        return TrainResult(None, history, evaluation)
    run_dir = claim_run_dir(Path(runs_dir), name or default_run_name(config), force=force)
    history = _fit_new(config, source, splits, run_dir, log=log)
    log(f"best epoch {min(history, key=lambda s: s.valid_loss).epoch} by valid loss; evaluating best.pt on test")
    evaluation = evaluate_run(run_dir, source=source, positive=positive, rule=rule, log=log)
    if report:
        from cnnlab.report.html import write_report

        log(f"report: {write_report(run_dir, source=source)}")
    log(f"run folder: {run_dir}")
    return TrainResult(run_dir, history, evaluation)


def resume(run_dir: Path, *, log: Callable[[str], None] = print) -> TrainResult:
    """Continue `run_dir` from last.pt to its configured epochs; the result equals an uninterrupted run."""
    run_dir = Path(run_dir)
    config = open_run(run_dir)
    last = load_checkpoint(run_dir / "last.pt")
    source = _load(config, log)
    check_compatible(last, model_name=config.model.name, class_names=source.class_names, path=run_dir / "last.pt")
    if last["epoch"] >= config.train.epochs:
        raise CnnlabError(f"{run_dir} already finished its {config.train.epochs} epochs (nothing to resume)")
    log(f"resuming {run_dir} after epoch {last['epoch']} of {config.train.epochs}")
    splits = load_splits(run_dir / "splits.json")
    history = _fit(config, source, splits, run_dir, resume=last, log=log)
    evaluation = evaluate_run(run_dir, source=source, log=log)
    log(f"run folder: {run_dir}")
    return TrainResult(run_dir, history, evaluation)


def _load(config: RunConfig, log) -> Source:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = load_source(config.data)
    for w in caught:
        log(f"warning: {w.message}")
    return source


def _fit_new(config, source, splits, run_dir: Path, *, max_batches=None, log) -> list[EpochStats]:
    with creating_run_dir(run_dir):
        save_config(config, run_dir / "config.yaml")
        save_splits(splits, run_dir / "splits.json", seed=config.train.seed)
        return _fit(config, source, splits, run_dir, max_batches=max_batches, log=log)


def _fit(config: RunConfig, source: Source, splits, run_dir: Path, *, resume=None, max_batches=None, log):
    t = config.train
    fabric = make_fabric(t)
    norm = Normalization.from_images(source.images[splits["train"]])
    images, labels = fabric.to_device(source.images), fabric.to_device(source.labels)
    policy = policy_for(config.data.augment, flip_invariant=source.flip_invariant)
    train_batches = InMemoryBatches(
        images, labels, splits["train"], batch_size=t.batch_size, norm=norm, shuffle=True, policy=policy,
        seed=t.seed, drop_last=True, max_batches=max_batches,
    )  # fmt: skip
    valid_batches = InMemoryBatches(
        images, labels, splits["valid"], batch_size=1000, norm=norm, max_batches=max_batches
    )
    meta = {
        "model_name": config.model.name,
        "config": config.to_dict(),
        "class_names": list(source.class_names),
        "preprocessing": {
            "image_size": source.image_size, "channels": source.channels,
            "mean": list(norm.mean), "std": list(norm.std), "resize": "shorter side bicubic, centre crop",
        },
    }  # fmt: skip
    # a local, seeded RNG scope: init and dropout repeat exactly, the caller's global RNG is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        model = create_model(
            config.model.name, num_classes=len(source.class_names),
            in_channels=source.channels, image_size=source.image_size, options=config.model.options,
        ).to(memory_format=torch.channels_last)  # fmt: skip
        n_params = sum(p.numel() for p in model.parameters())
        recipe = f"{t.optimizer} lr {t.lr} {t.schedule}, batch {t.batch_size}, {t.epochs} epochs"
        log(f"model: {config.model.name}, {n_params:,} parameters; {recipe} on {fabric.device}")
        return fit(fabric, model, train_batches, valid_batches, t, run_dir, meta=meta, resume=resume, log=log)
