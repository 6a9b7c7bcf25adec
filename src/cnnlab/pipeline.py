"""`train` and `resume`: config -> data -> model -> fit -> evaluate, all in one run folder.

This is the Python API the CLI wraps: `cnnlab.pipeline.train(RunConfig(...))`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cnnlab.audit.checks import restored, rows
from cnnlab.audit.gate import audit_for_training, write_audit
from cnnlab.config import RunConfig, save_config
from cnnlab.data.augment import policy_for
from cnnlab.data.batches import run_batches
from cnnlab.data.lazy import select
from cnnlab.data.sources import Source, load_source
from cnnlab.data.splits import load_splits, make_splits, save_splits
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.evaluate import evaluate_run
from cnnlab.models import create_model, describe_model
from cnnlab.models.checkpoint import Checkpoint, InputSpec, check_compatible, load_checkpoint
from cnnlab.models.pretrained import FROZEN_STRATEGIES, is_pretrained_name, load_pretrained
from cnnlab.report.html import write_report
from cnnlab.report.tensorboard import log_evaluation
from cnnlab.runs import claim_shared_run_dir, creating_run_dir, default_run_name, open_run, record_config
from cnnlab.train.budget import plan_budget
from cnnlab.train.fit import EpochStats, accelerator_for, fit, make_fabric
from cnnlab.train.flips import FlipCheck
from cnnlab.train.plan import data_decisions
from cnnlab.train.precision import decide_precision
from cnnlab.train.transfer import fit_frozen_head, resolve_strategy, training_normalization, transfer_defaults


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
    report: bool = True,
    explain: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `config` into `runs_dir/name`, then evaluate the best checkpoint on the test split.

    Every input is checked before the run folder is created; a failure before the first saved epoch
    removes the folder. `dry_run` trains and scores one batch in a temporary folder. A positive class
    (`config.evaluation`) is checked against the data here, once; evaluation and the report read it from the
    run's config.yaml and eval.json.
    """
    describe_model(config.model.name)  # an unknown model fails before any data is read
    config = transfer_defaults(config)
    accelerator_for(config.train)  # an impossible device fails before any data is read
    launcher = None  # several processes: the Fabric must exist (and launch) before the data is read
    if config.train.devices * config.train.num_nodes > 1 and not dry_run:
        launcher = make_fabric(config.train)
        launcher.launch()  # re-runs this command in the other processes (or joins torchrun's)
    log = log if launcher is None or launcher.is_global_zero else _silent
    source = load_source(config.data, log=log)
    positive = config.evaluation.positive
    if positive is not None and positive not in source.class_names:
        raise CnnlabError(f"unknown positive class '{positive}' (classes: {', '.join(source.class_names)})")
    splits = make_splits(
        source.labels.numpy(), source.partitions, valid_fraction=config.data.valid_fraction,
        test_fraction=config.data.test_fraction, seed=config.train.seed, train_limit=config.data.train_limit,
    )  # fmt: skip
    log(f"data: {source.name}, {len(source.class_names)} classes, {source.channels}x{source.image_size}px; "
        f"train {len(splits['train'])} / valid {len(splits['valid'])} / test {len(splits['test'])}")  # fmt: skip
    splits, found, dropped = (splits, None, {}) if dry_run else audit_for_training(config, source, splits, log)
    config = data_decisions(config, source, len(splits["train"]), log)  # image size, flips, batch size
    config = resolve_strategy(config, source, splits, positive=positive, measure=not dry_run, log=log)
    config = _decide_precision(config, source, measure=not dry_run and launcher is None, log=log)
    if dry_run:
        config = replace(config, train=replace(config.train, epochs=1, devices=1, num_nodes=1))
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "dry-run"
            history = _fit_new(config, make_fabric(config.train), source, splits, run_dir, max_batches=1, log=log)
            evaluation = evaluate_run(run_dir, source=source, dry_run=True, log=log)
        return TrainResult(None, history, evaluation)
    fabric = launcher or make_fabric(config.train)
    run_dir = claim_shared_run_dir(fabric, runs_dir, name or default_run_name(config), force=force)
    history = _fit_new(config, fabric, source, splits, run_dir, audit=(found, dropped), log=log)
    if not fabric.is_global_zero:
        return TrainResult(run_dir, history, {})  # rank 0 evaluates and reports
    log(f"best epoch {min(history, key=lambda s: s.valid_loss).epoch} by valid loss; evaluating best.pt on test")
    evaluation = evaluate_run(run_dir, source=source, log=log)  # positive class and rule from config.yaml
    _log_evaluation(config, run_dir, source, history, log)
    if report:
        log(f"report: {write_report(run_dir, source=source, explain=explain)}")
    log(f"run folder: {run_dir}")
    return TrainResult(run_dir, history, evaluation)


def _silent(_: str) -> None:
    pass


def _log_evaluation(config: RunConfig, run_dir: Path, source: Source, history: list[EpochStats], log) -> None:
    """With --logger tensorboard: the test result joins the run's curves."""
    if config.train.logger == "tensorboard" and history:
        log(f"tensorboard: {log_evaluation(run_dir, source, epoch=history[-1].epoch)} "
            "(view with: tensorboard --logdir runs)")  # fmt: skip


def _decide_precision(config: RunConfig, source: Source, *, measure: bool, log) -> RunConfig:
    """`precision: auto` made concrete by timing this model on this machine (engine/precision.py); heads on
    frozen features are fit in fp32 and need no decision."""
    if config.model.strategy in FROZEN_STRATEGIES:
        return config

    channels = 3 if is_pretrained_name(config.model.name) else source.channels  # grey broadcasts to RGB there
    return decide_precision(
        config, lambda: _build_model(config, source), num_classes=len(source.class_names), in_channels=channels,
        image_size=source.image_size, measure=measure, log=log,
    )  # fmt: skip


def _build_model(config: RunConfig, source: Source) -> torch.nn.Module:
    """The run's model, untrained (pretrained weights are loaded by the caller), channels_last."""
    return create_model(
        config.model.name, num_classes=len(source.class_names), in_channels=source.channels,
        image_size=source.image_size, options=config.model.options, strategy=config.model.strategy,
    ).to(memory_format=torch.channels_last)  # fmt: skip


def resume(run_dir: Path, *, log: Callable[[str], None] = print) -> TrainResult:
    """Continue `run_dir` from last.pt to its configured epochs; the result equals an uninterrupted run. A run
    killed before its first epoch was saved starts again from its saved plan; one killed after its last epoch
    but before evaluation is evaluated."""
    run_dir = Path(run_dir)
    config = open_run(run_dir)
    source = load_source(config.data, log=log)
    last = None
    if (run_dir / "last.pt").is_file():
        last = load_checkpoint(run_dir / "last.pt")
        check_compatible(last, model_name=config.model.name, class_names=source.class_names, path=run_dir / "last.pt")
    if config.model.strategy in FROZEN_STRATEGIES:
        raise CnnlabError(f"{run_dir} fit its head to convergence in one step (nothing to resume)")
    if last is not None and last.epoch >= config.train.epochs:
        if (run_dir / "eval.json").is_file():
            raise CnnlabError(f"{run_dir} already finished its {config.train.epochs} epochs (nothing to resume)")
        log(f"{run_dir} finished training before it was stopped; evaluating best.pt")
        evaluation = evaluate_run(run_dir, source=source, log=log)
        log(f"run folder: {run_dir}")
        return TrainResult(run_dir, [], evaluation)
    saved = f"after epoch {last.epoch}" if last is not None else "from the start (no epoch had been saved)"
    log(f"resuming {run_dir} {saved} of {config.train.epochs}")
    splits = load_splits(run_dir / "splits.json")
    config = replace(config, train=replace(config.train, devices=1, num_nodes=1))  # resume runs in one process
    history = _fit(config, make_fabric(config.train), source, splits, run_dir, resume=last, log=log)
    evaluation = evaluate_run(run_dir, source=source, log=log)
    _log_evaluation(config, run_dir, source, history, log)
    log(f"run folder: {run_dir}")
    return TrainResult(run_dir, history, evaluation)


def _fit_new(
    config, fabric, source, splits, run_dir: Path, *, max_batches=None, audit=(None, {}), log
) -> list[EpochStats]:
    if not fabric.is_global_zero:
        return _fit(config, fabric, source, splits, run_dir, max_batches=max_batches, log=log)
    found, dropped = audit
    with creating_run_dir(run_dir):
        save_config(config, run_dir / "config.yaml")
        save_splits(splits, run_dir / "splits.json", seed=config.train.seed, deduplicated=dropped)
        if found is not None:  # the table is about the data as it is (dropped images included)
            write_audit(run_dir, found, rows(found, source, restored(splits, dropped)))
        return _fit(config, fabric, source, splits, run_dir, max_batches=max_batches, log=log)


def _fit(config: RunConfig, fabric, source: Source, splits, run_dir: Path, *, resume=None, max_batches=None, log):
    t = config.train
    norm = training_normalization(config, select(source.images, splits["train"]))
    inputs = InputSpec(source.image_size, source.channels, norm.mean, norm.std, config.data.crop_pct)
    meta = Checkpoint(config.model.name, list(source.class_names), inputs, config.to_dict())  # weights come later
    # a local, seeded RNG scope: init and dropout repeat exactly, the caller's global RNG is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        model = _build_model(config, source)
        if is_pretrained_name(config.model.name) and config.model.strategy != "retrain" and resume is None:
            load_pretrained(model, config.model.weights)
        if model.frozen:  # a linear head on cached features, fit to convergence: no epochs
            stats = fit_frozen_head(
                model, config, source, splits, norm, run_dir, meta, writer=fabric.is_global_zero,
                dry_run=max_batches is not None, log=log,
            )  # fmt: skip
            return [stats]
        policy = policy_for(config.data.augment, flip_invariant=bool(config.data.flips))  # undecided: off for now
        train_batches, valid_batches = run_batches(
            fabric.to_device(source.images), fabric.to_device(source.labels), splits, batch_size=t.batch_size,
            norm=norm, policy=policy, seed=t.seed, max_batches=max_batches, rank=fabric.global_rank,
            world=fabric.world_size,
        )  # fmt: skip
        if t.budget_minutes is not None and resume is None and max_batches is None and fabric.world_size == 1:
            config = replace(config, train=plan_budget(t, fabric, model, train_batches, valid_batches, log))
            t = config.train
            record_config(run_dir, config, meta, writer=True)  # the planned epochs, so resume follows the same plan
        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        recipe = f"{t.optimizer} lr {t.lr} {t.schedule}, batch {t.batch_size}, {t.epochs} epochs"
        where = f"{fabric.device}" + (f" x {fabric.world_size} processes (DDP)" if fabric.world_size > 1 else "")
        log(f"model: {config.model.name}, {n_params:,} parameters ({n_train:,} trained); {recipe} on {where}")
        flip_check = None
        if config.data.flips is None and config.data.augment != "none":  # also on resume, if still undecided

            def record_flips(flips: bool, why: str) -> None:
                log(f"flips: {'on' if flips else 'off'} ({why})")
                decided = replace(config, data=replace(config.data, flips=flips))
                record_config(run_dir, decided, meta, writer=fabric.is_global_zero, flips=why)

            flip_check = FlipCheck(len(source.class_names), record=record_flips)
            log("flips: off until measured (valid accuracy as is vs mirrored, once the model beats chance)")
        return fit(
            fabric, model, train_batches, valid_batches, t, run_dir, meta=meta, resume=resume, flip_check=flip_check,
            log=log,
        )  # fmt: skip
