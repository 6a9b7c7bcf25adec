"""The spine: `train` = data -> plan -> model -> fit -> evaluate -> explain -> report, all in one run folder;
`resume` continues one; `report_run` (re)writes a run's report.

This is the Python API the CLI wraps: `cnnlab.pipeline.train(RunConfig(...))`. config.yaml is written here
only (through `runs.write_run_config`): when the plan is made, and again when training returns a decision
it measured.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from cnnlab.audit.checks import all_restored, rows
from cnnlab.audit.gate import write_audit
from cnnlab.config import ModelConfig, RunConfig, parse_rule
from cnnlab.data.memory import release_free_heap, return_freed_memory
from cnnlab.data.sources import Source, load_source
from cnnlab.data.splits import read_run_splits, save_splits
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.evaluate import evaluate_run, rescore_binary
from cnnlab.explain.run import PICTURE_IMAGES, ExplainOptions, explain_run, explain_work
from cnnlab.models.checkpoint import check_compatible, load_checkpoint
from cnnlab.models.pretrained import FROZEN_STRATEGIES, backbone_preprocessing, is_pretrained_name
from cnnlab.models.registry import ENSEMBLE
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
from cnnlab.training.auto import command_minutes
from cnnlab.training.fit import EpochStats, make_fabric
from cnnlab.training.plan import Plan, check_request, plan_run
from cnnlab.training.runner import train_model

SEARCH_SIDE = 224  # px: the side the model search's backbone (training/auto.py BACKBONE) computes at
REPORT_SECONDS = 5.0  # rendering the report once explaining is done (2-4 s here): kept from what explaining may take


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
    epoch removes the folder. `dry_run` trains and scores one batch in a temporary folder. --budget-minutes
    bounds the whole command: loading and planning are spent from it, and evaluating and reporting kept back."""
    started = time.perf_counter()
    return_freed_memory()  # large data: memory stays flat batch after batch (the CLI does it too)
    explained = explain_work(SEARCH_SIDE) if report and explain else (0, 0.0)  # kept back from a large folder's sample
    config = check_request(config, log, budget_start=started, kept=explained)
    minutes = command_minutes(config)
    deadline = None if minutes is None else started + 60 * minutes
    launcher = _launch(config, dry_run)  # several processes: launched before the data is read
    log = log if launcher is None or launcher.is_global_zero else _silent
    source = load_source(config.data, log=log)
    after = partial(_after_training, source=source, report=report, explain=explain)
    plan = _shared_plan(launcher, lambda: plan_run(config, source, measure=not dry_run, audit=not dry_run, log=log,
                                                   budget_start=started, after=after))  # fmt: skip
    if dry_run:
        return _dry_run(plan, source, log)
    fabric = launcher or make_fabric(plan.config.train)
    try:
        run_dir = claim_shared_run_dir(fabric, runs_dir, name or default_run_name(plan.config), force=force)
        config, history = _fit_new(plan, fabric, source, run_dir, budget_start=started,
                                   after=after(plan.config, plan.splits), log=log)  # fmt: skip
    finally:
        if plan.trained is not None and fabric.is_global_zero:  # moved into the run folder, or not wanted
            plan.trained.discard()
    if not fabric.is_global_zero:
        return TrainResult(run_dir, history, {})  # rank 0 evaluates and reports
    log(f"best epoch {min(history, key=lambda s: s.valid_loss).epoch} by valid loss; evaluating best.pt on test")
    evaluation = _evaluate(config, run_dir, source, history, log)
    if report:
        left = None if deadline is None else deadline - time.perf_counter() - REPORT_SECONDS
        release_free_heap()  # training's and evaluation's temporaries, before explaining's
        log(f"report: {_report(run_dir, source=source, explain=explain, log=log, seconds=left)}")
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
    if config.model.name == ENSEMBLE:
        raise CnnlabError(f"{run_dir} is an ensemble assembled from finished candidates (nothing to resume)")
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
    splits = read_run_splits(run_dir / RunFile.SPLITS, source, log=log).splits  # the recorded files, none added
    config = replace(config, train=replace(config.train, devices=1, num_nodes=1))  # resume runs in one process
    config, history = train_model(config, make_fabric(config.train), source, splits, run_dir, resume=last, log=log)
    write_run_config(run_dir, config)
    evaluation = _evaluate(config, run_dir, source, history, log)
    log(f"run folder: {run_dir}")
    return TrainResult(run_dir, history, evaluation)


def report_run(
    run_dir: Path, *, positive: str | None = None, rule: str | None = None, readers: Path | None = None,
    explain: bool = True, dry_run: bool = False, log: Callable[[str], None] = print,
) -> Path | None:  # fmt: skip
    """`cnnlab report`: eval.json's binary block recomputed first for another `positive` class or `rule` (from
    the saved predictions), `cnnlab explain` run once if asked for and not there yet, then RUN/report.html. A folder
    changed since training is named in one line (the report shows what the evaluation scored)."""
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
    source = load_source(open_run(Path(run_dir)).data, log=log)
    read_run_splits(Path(run_dir) / RunFile.SPLITS, source, needed=(), log=log)  # says if the folder changed since
    return _report(Path(run_dir), source=source, readers=readers, explain=explain, log=log)


def _silent(_: str) -> None:
    pass


def _launch(config: RunConfig, dry_run: bool):
    """The Fabric of a multi-process run, launched (it re-runs this command in the other processes); else None."""
    if config.train.devices * config.train.num_nodes == 1 or dry_run:
        return None
    launcher = make_fabric(config.train)
    launcher.launch()
    return launcher


def _shared_plan(launcher, make: Callable[[], Plan]) -> Plan:
    """The plan, made once: in this process, or under DDP by rank 0 (it measures the model search, the precision
    and the budget's probe in one process while the others wait) and sent to every process."""
    if launcher is None:
        return make()
    return launcher.broadcast(make() if launcher.is_global_zero else None, src=0)


def _dry_run(plan: Plan, source: Source, log) -> TrainResult:
    """One batch through fit and evaluation in a temporary folder: every step runs, nothing is kept."""
    config = replace(plan.config, train=replace(plan.config.train, epochs=1, devices=1, num_nodes=1))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "dry-run"
        run_dir.mkdir()
        write_run_config(run_dir, config)
        save_splits(plan.splits, run_dir / RunFile.SPLITS, source=source, seed=config.train.seed, groups=plan.groups)
        _, history = train_model(
            config, make_fabric(config.train), source, plan.splits, run_dir, max_batches=1, log=log
        )
        evaluation = evaluate_run(run_dir, source=source, dry_run=True, log=log)
    return TrainResult(None, history, evaluation)


def _fit_new(
    plan: Plan, fabric, source: Source, run_dir: Path, *, budget_start: float, after: tuple[float, float], log
) -> tuple[RunConfig, list[EpochStats]]:  # fmt: skip
    """A new run folder (rank 0): the plan, splits and audit first, then training; config.yaml again with
    what training decided."""
    if not fabric.is_global_zero:
        if plan.trained is not None:  # rank 0's search trained the winner: nothing to train together
            return plan.config, plan.trained.history
        return train_model(plan.config, fabric, source, plan.splits, run_dir, budget_start=budget_start, after=after,
                           log=log)  # fmt: skip
    with creating_run_dir(run_dir):
        write_run_config(run_dir, plan.config)
        save_splits(plan.splits, run_dir / RunFile.SPLITS, source=source, seed=plan.config.train.seed,
                    dropped=plan.dropped, groups=plan.groups)  # fmt: skip
        if plan.audit is not None:  # the table is about the data as it is (dropped images included)
            write_audit(run_dir, plan.audit, rows(plan.audit, source, all_restored(plan.splits, plan.dropped)))
        if plan.trained is not None:  # the model search trained the winner already
            plan.trained.move_into(run_dir)
            return plan.config, plan.trained.history
        config, history = train_model(plan.config, fabric, source, plan.splits, run_dir, budget_start=budget_start,
                                      after=after, log=log)  # fmt: skip
        write_run_config(run_dir, config)
        return config, history


def _after_training(config: RunConfig, splits, least: bool = False, *, source: Source, report: bool,
                    explain: bool) -> tuple[float, float]:  # fmt: skip
    """What the command does after training `config` (what a budget keeps back), as (validation passes of the model,
    seconds besides): the validation and test splits scored, twice where test-time flips may be on, and explaining
    (`least`: at its least, the pictures' images: under a budget it takes what is left)."""
    valid, test = len(splits["valid"]), len(splits["test"])
    images, seconds = (1 if config.data.flips is False else 2) * (valid + test), 0.0
    if report and explain:
        side = _computed_side(config.model, source.image_size)
        explained, seconds = explain_work(side, explained=PICTURE_IMAGES if least else None)
        images += explained
    return images / max(valid, 1), seconds


def _computed_side(model: ModelConfig, image_size: int) -> int:
    """The side the model computes at: a pretrained backbone resizes every input to its own input size (or the one
    asked for with --image-size), as explain measures it."""
    if model.name == ENSEMBLE:
        return max(_computed_side(ModelConfig(m["name"], m.get("options") or {}), image_size)
                   for m in model.options["members"])  # fmt: skip
    if not is_pretrained_name(model.name):
        return image_size
    return max(image_size, model.options.get("input_size") or backbone_preprocessing(model.name).input_size)


def _evaluate(config: RunConfig, run_dir: Path, source: Source, history: list[EpochStats], log) -> dict[str, Any]:
    """The best checkpoint on test; with --logger tensorboard the result joins the run's curves."""
    evaluation = evaluate_run(run_dir, source=source, log=log)  # positive class and rule from config.yaml
    if config.train.logger == "tensorboard" and history:
        log(f"tensorboard: {log_evaluation(run_dir, source, epoch=history[-1].epoch)} "
            "(view with: tensorboard --logdir runs)")  # fmt: skip
    return evaluation


def _report(run_dir: Path, *, source: Source | None = None, readers: Path | None = None, explain: bool, log,
            seconds: float | None = None) -> Path:  # fmt: skip
    """Explain first (once; its folder is what the report shows; within `seconds`, a budget's remainder, with fewer
    images where the default's would not fit), then render the report from the run folder."""
    if explain and not (run_dir / RunFile.EXPLAIN / RunFile.EXPLAIN_JSON).is_file():
        try:
            result = explain_run(run_dir, options=ExplainOptions(seconds=seconds), log=_silent)
            if "budget" in result:
                log(f"explain: {result['budget']}")
        except CnnlabError as exc:  # e.g. a model explain cannot trace: the report says why, training stands
            log(f"explain: skipped ({exc})")
    return write_report(run_dir, source=source, readers=readers, explain=explain)
