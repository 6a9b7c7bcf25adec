"""The spine: `train` = data -> plan -> model -> fit -> evaluate -> explain -> report, all in one run folder;
`resume` continues one; `report_run` (re)writes a run's report.

This is the Python API the CLI wraps: `cnnlab.pipeline.train(RunConfig(...))`. config.yaml is written here
only (through `runs.write_run_config`): when the plan is made, and again when training returns a decision
it measured.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cnnlab.audit.checks import restored, rows
from cnnlab.audit.gate import write_audit
from cnnlab.config import RunConfig, parse_rule, with_decisions
from cnnlab.data.augment import policy_for
from cnnlab.data.batches import run_batches
from cnnlab.data.lazy import select
from cnnlab.data.sources import Source, load_source
from cnnlab.data.splits import load_splits, save_splits
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.evaluate import evaluate_run, rescore_binary
from cnnlab.explain.run import explain_run
from cnnlab.models.checkpoint import Checkpoint, InputSpec, check_compatible, load_checkpoint
from cnnlab.models.pretrained import FROZEN_STRATEGIES, is_pretrained_name, load_pretrained
from cnnlab.report.html import load_evaluation, read_readers, write_report
from cnnlab.report.tensorboard import log_evaluation
from cnnlab.runs import (
    RunFile,
    claim_shared_run_dir,
    creating_run_dir,
    default_run_name,
    open_run,
    write_run_config,
)
from cnnlab.train.budget import plan_budget
from cnnlab.train.fit import EpochStats, fit, make_fabric
from cnnlab.train.flips import FlipCheck
from cnnlab.train.plan import Plan, build_model, check_request, plan_run
from cnnlab.train.transfer import fit_frozen_head, training_normalization


@dataclass
class TrainResult:
    run_dir: Path | None  # None for a dry run
    history: list[EpochStats]
    evaluation: dict[str, Any]


def train(
    config: RunConfig, *, runs_dir: Path = Path("runs"), name: str | None = None, force: bool = False,
    dry_run: bool = False, report: bool = True, explain: bool = True, log: Callable[[str], None] = print,
) -> TrainResult:  # fmt: skip
    """Train `config` into `runs_dir/name`, then evaluate the best checkpoint on the test split, explain it and
    write the report. Every input is checked before the run folder is created; a failure before the first saved
    epoch removes the folder. `dry_run` trains and scores one batch in a temporary folder."""
    config = check_request(config)
    launcher = _launch(config, dry_run)  # several processes: launched before the data is read
    log = log if launcher is None or launcher.is_global_zero else _silent
    source = load_source(config.data, log=log)
    plan = plan_run(config, source, measure=not dry_run and launcher is None, audit=not dry_run, log=log)
    if dry_run:
        return _dry_run(plan, source, log)
    fabric = launcher or make_fabric(plan.config.train)
    run_dir = claim_shared_run_dir(fabric, runs_dir, name or default_run_name(plan.config), force=force)
    config, history = _fit_new(plan, fabric, source, run_dir, log=log)
    if not fabric.is_global_zero:
        return TrainResult(run_dir, history, {})  # rank 0 evaluates and reports
    log(f"best epoch {min(history, key=lambda s: s.valid_loss).epoch} by valid loss; evaluating best.pt on test")
    evaluation = _evaluate(config, run_dir, source, history, log)
    if report:
        log(f"report: {_report(run_dir, source=source, explain=explain, log=log)}")
    log(f"run folder: {run_dir}")
    return TrainResult(run_dir, history, evaluation)


def resume(run_dir: Path, *, log: Callable[[str], None] = print) -> TrainResult:
    """Continue `run_dir` from last.pt to its configured epochs; the result equals an uninterrupted run. A run
    killed before its first epoch was saved starts again from its saved plan; one killed after its last epoch
    but before evaluation is evaluated. Decisions measured during training (flips) come from last.pt."""
    run_dir = Path(run_dir)
    config = open_run(run_dir)
    source = load_source(config.data, log=log)
    last = None
    last_path = run_dir / RunFile.LAST
    if last_path.is_file():
        last = load_checkpoint(last_path)
        check_compatible(last, model_name=config.model.name, class_names=source.class_names, path=last_path)
        config = RunConfig.from_dict(last.config)  # config.yaml is rewritten when training returns
    if config.model.strategy in FROZEN_STRATEGIES:
        raise CnnlabError(f"{run_dir} fit its head to convergence in one step (nothing to resume)")
    if last is not None and last.epoch >= config.train.epochs:
        if (run_dir / RunFile.EVAL).is_file():
            raise CnnlabError(f"{run_dir} already finished its {config.train.epochs} epochs (nothing to resume)")
        log(f"{run_dir} finished training before it was stopped; evaluating best.pt")
        write_run_config(run_dir, config)
        evaluation = evaluate_run(run_dir, source=source, log=log)
        log(f"run folder: {run_dir}")
        return TrainResult(run_dir, [], evaluation)
    saved = f"after epoch {last.epoch}" if last is not None else "from the start (no epoch had been saved)"
    log(f"resuming {run_dir} {saved} of {config.train.epochs}")
    splits = load_splits(run_dir / RunFile.SPLITS)
    config = replace(config, train=replace(config.train, devices=1, num_nodes=1))  # resume runs in one process
    config, history = _fit(config, make_fabric(config.train), source, splits, run_dir, resume=last, log=log)
    write_run_config(run_dir, config)
    evaluation = _evaluate(config, run_dir, source, history, log)
    log(f"run folder: {run_dir}")
    return TrainResult(run_dir, history, evaluation)


def report_run(
    run_dir: Path, *, positive: str | None = None, rule: str | None = None, readers: Path | None = None,
    explain: bool = True, dry_run: bool = False, log: Callable[[str], None] = print,
) -> Path | None:  # fmt: skip
    """`cnnlab report`: eval.json's binary block recomputed first for another `positive` class or `rule` (from
    the saved predictions), `cnnlab explain` run once if asked for and not there yet, then RUN/report.html."""
    if rule is not None:
        parse_rule(rule)  # an invalid rule fails before anything is read
    if dry_run:
        load_evaluation(run_dir)
        if readers:
            read_readers(readers)
        log(f"dry run ok: {run_dir} can be reported (nothing written)")
        return None
    if positive is not None or rule is not None:
        rescore_binary(run_dir, positive=positive, rule=rule)
    return _report(Path(run_dir), readers=readers, explain=explain, log=log)


def _silent(_: str) -> None:
    pass


def _launch(config: RunConfig, dry_run: bool):
    """The Fabric of a multi-process run, launched (it re-runs this command in the other processes); else None."""
    if config.train.devices * config.train.num_nodes == 1 or dry_run:
        return None
    launcher = make_fabric(config.train)
    launcher.launch()
    return launcher


def _dry_run(plan: Plan, source: Source, log) -> TrainResult:
    """One batch through fit and evaluation in a temporary folder: every step runs, nothing is kept."""
    config = replace(plan.config, train=replace(plan.config.train, epochs=1, devices=1, num_nodes=1))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "dry-run"
        run_dir.mkdir()
        write_run_config(run_dir, config)
        save_splits(plan.splits, run_dir / RunFile.SPLITS, seed=config.train.seed)
        _, history = _fit(config, make_fabric(config.train), source, plan.splits, run_dir, max_batches=1, log=log)
        evaluation = evaluate_run(run_dir, source=source, dry_run=True, log=log)
    return TrainResult(None, history, evaluation)


def _fit_new(plan: Plan, fabric, source: Source, run_dir: Path, *, log) -> tuple[RunConfig, list[EpochStats]]:
    """A new run folder (rank 0): the plan, splits and audit first, then training; config.yaml again with
    what training decided."""
    if not fabric.is_global_zero:
        return _fit(plan.config, fabric, source, plan.splits, run_dir, log=log)
    with creating_run_dir(run_dir):
        write_run_config(run_dir, plan.config)
        save_splits(plan.splits, run_dir / RunFile.SPLITS, seed=plan.config.train.seed, deduplicated=plan.dropped)
        if plan.audit is not None:  # the table is about the data as it is (dropped images included)
            write_audit(run_dir, plan.audit, rows(plan.audit, source, restored(plan.splits, plan.dropped)))
        config, history = _fit(plan.config, fabric, source, plan.splits, run_dir, log=log)
        write_run_config(run_dir, config)
        return config, history


def _fit(
    config: RunConfig, fabric, source: Source, splits, run_dir: Path, *, resume=None, max_batches=None, log
) -> tuple[RunConfig, list[EpochStats]]:
    """Model, batches and the loop (or a head on frozen features); returns the config with what training
    decided (budget epochs, measured flips, the head's regularisation) and the history."""
    t = config.train
    norm = training_normalization(config, select(source.images, splits["train"]))
    inputs = InputSpec(source.image_size, source.channels, norm.mean, norm.std, config.data.crop_pct)
    meta = Checkpoint(config.model.name, list(source.class_names), inputs, config.to_dict())  # weights come later
    # a local, seeded RNG scope: init and dropout repeat exactly, the caller's global RNG is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        model = build_model(config, source)
        if is_pretrained_name(config.model.name) and config.model.strategy != "retrain" and resume is None:
            load_pretrained(model, config.model.weights)
        if model.frozen:  # a linear head on cached features, fit to convergence: no epochs
            stats, config = fit_frozen_head(
                model, config, source, splits, norm, run_dir, meta, writer=fabric.is_global_zero,
                dry_run=max_batches is not None, log=log,
            )  # fmt: skip
            return config, [stats]
        policy = policy_for(config.data.augment, flip_invariant=bool(config.data.flips))  # undecided: off for now
        train_batches, valid_batches = run_batches(
            fabric.to_device(source.images), fabric.to_device(source.labels), splits, batch_size=t.batch_size,
            norm=norm, policy=policy, seed=t.seed, max_batches=max_batches, rank=fabric.global_rank,
            world=fabric.world_size,
        )  # fmt: skip
        if t.budget_minutes is not None and resume is None and max_batches is None and fabric.world_size == 1:
            config = replace(config, train=plan_budget(t, fabric, model, train_batches, valid_batches, log))
            t, meta.config = config.train, config.to_dict()
            write_run_config(run_dir, config)  # the planned epochs, so resume follows the same plan
        _log_model(config, model, fabric, log)
        decided: dict[str, tuple[bool, str]] = {}
        flip_check = _flip_check(config, source, meta, decided, log)
        history = fit(
            fabric, model, train_batches, valid_batches, t, run_dir, meta=meta, resume=resume, flip_check=flip_check,
            log=log,
        )  # fmt: skip
    if "flips" in decided:
        flips, why = decided["flips"]
        config = with_decisions(replace(config, data=replace(config.data, flips=flips)), flips=why)
    return config, history


def _log_model(config: RunConfig, model, fabric, log) -> None:
    t = config.train
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    recipe = f"{t.optimizer} lr {t.lr} {t.schedule}, batch {t.batch_size}, {t.epochs} epochs"
    where = f"{fabric.device}" + (f" x {fabric.world_size} processes (DDP)" if fabric.world_size > 1 else "")
    log(f"model: {config.model.name}, {n_params:,} parameters ({n_train:,} trained); {recipe} on {where}")


def _flip_check(config: RunConfig, source: Source, meta: Checkpoint, decided: dict, log) -> FlipCheck | None:
    """Folders whose flips are undecided measure them during training (also on resume, if still undecided).
    The decision goes into the checkpoints at once (resume reads it from last.pt) and into `decided`."""
    if config.data.flips is not None or config.data.augment == "none":
        return None

    def record(flips: bool, why: str) -> None:
        log(f"flips: {'on' if flips else 'off'} ({why})")
        decided["flips"] = (flips, why)
        meta.config = with_decisions(replace(config, data=replace(config.data, flips=flips)), flips=why).to_dict()

    log("flips: off until measured (valid accuracy as is vs mirrored, once the model beats chance)")
    return FlipCheck(len(source.class_names), record=record)


def _evaluate(config: RunConfig, run_dir: Path, source: Source, history: list[EpochStats], log) -> dict[str, Any]:
    """The best checkpoint on test; with --logger tensorboard the result joins the run's curves."""
    evaluation = evaluate_run(run_dir, source=source, log=log)  # positive class and rule from config.yaml
    if config.train.logger == "tensorboard" and history:
        log(f"tensorboard: {log_evaluation(run_dir, source, epoch=history[-1].epoch)} "
            "(view with: tensorboard --logdir runs)")  # fmt: skip
    return evaluation


def _report(run_dir: Path, *, source: Source | None = None, readers: Path | None = None, explain: bool, log) -> Path:
    """Explain first (once; its folder is what the report shows), then render the report from the run folder."""
    if explain and not (run_dir / RunFile.EXPLAIN / RunFile.EXPLAIN_JSON).is_file():
        try:
            explain_run(run_dir, log=_silent)
        except CnnlabError as exc:  # e.g. a model explain cannot trace: the report says why, training stands
            log(f"explain: skipped ({exc})")
    return write_report(run_dir, source=source, readers=readers, explain=explain)
