"""Every pre-training decision, made once: `check_request` before any data is read (model name, device, a
backbone's input size), then `plan_run` on the loaded data: splits, the audit gate, a folder's image size,
whether flips keep labels (known for datasets; folders: measured during training, see training/flips.py), a batch
size that gives a small train split enough steps per epoch, the transfer strategy and the precision. Each is
printed and recorded with its reason under `decisions:`; the returned config has no `auto` left but the two
decisions only training can measure (a folder's flips, the epochs that fit a --budget-minutes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from cnnlab.audit.checks import Audit
from cnnlab.audit.gate import audit_for_training, split_groups
from cnnlab.config import RunConfig, with_decisions
from cnnlab.data.batches import default_batch_size
from cnnlab.data.lazy import is_streamed
from cnnlab.data.sources import Source, scan_folder
from cnnlab.data.splits import make_splits
from cnnlab.errors import CnnlabError
from cnnlab.models import describe_model
from cnnlab.training.auto import AUTO, BACKBONE, AfterWork, Trained, command_minutes, model_before_data, search_models
from cnnlab.training.fit import accelerator_for
from cnnlab.training.runner import decide_run_precision
from cnnlab.training.scale import sample_for_budget
from cnnlab.training.transfer import resolve_strategy, transfer_defaults


@dataclass(frozen=True)
class Plan:
    """What training will do, decided before it starts."""

    config: RunConfig  # resolved; see the module doc for the two decisions training still makes
    splits: dict[str, np.ndarray]  # train/valid/test indices into the source
    audit: Audit | None  # what the audit gate found (None: not run)
    dropped: dict[str, dict[str, list[int]]]  # why (deduplicated, degenerate) -> split -> images left out
    trained: Trained | None = None  # the model search's winner, already trained (adopted, not trained again)
    groups: np.ndarray | None = None  # one group id per image (user groups joined with duplicate clusters)


def check_request(
    config: RunConfig, log: Callable[[str], None] = print, *, budget_start: float | None = None,
    kept: tuple[int, float] = (0, 0.0),
) -> RunConfig:  # fmt: skip
    """What can be judged before any data is read: an unknown model or an impossible device fails here; `auto`
    is resolved where a folder's listing decides (training/auto.py), and a folder too large for the model search's
    budget (counted from `budget_start`, default now; `kept`: the work after training, in images scored and seconds
    besides) is sampled (training/scale.py); a pretrained backbone sets the size folders decode at."""
    if config.model.name != AUTO:
        describe_model(config.model.name)
    searched = config.model.name == AUTO and config.model.strategy in (None, AUTO)
    scan = scan_folder(config.data) if searched and config.data.source.startswith("folder:") else None
    config = model_before_data(config, log, scan)
    if scan is not None and config.model.name == AUTO:  # a folder's model search: listed once, for both
        spent = 0.0 if budget_start is None else time.perf_counter() - budget_start
        seconds = 60 * command_minutes(config) - spent
        config = sample_for_budget(config, scan.files, seconds=seconds, backbone=BACKBONE, kept=kept, log=log)
    config = transfer_defaults(config)
    accelerator_for(config.train)
    return config


def plan_run(
    config: RunConfig, source: Source, *, measure: bool, audit: bool, log: Callable[[str], None],
    budget_start: float | None = None, after: AfterWork | None = None,
) -> Plan:  # fmt: skip
    """Splits, the audit gate, then the decisions read off the data and the machine. `measure` False (a dry run,
    several processes) skips what costs measurement: the strategy search and the precision timing. A folder's model
    search is bounded from `budget_start` (when the command began), keeping back `after` (see `search_models`)."""
    positive = config.evaluation.positive
    if positive is not None and positive not in source.class_names:
        raise CnnlabError(f"unknown positive class '{positive}' (classes: {', '.join(source.class_names)})")
    d = config.data
    groups, pairs = split_groups(config, source, log, near=audit)
    splits = make_splits(
        source.labels.numpy(), source.partitions, valid_fraction=d.valid_fraction, test_fraction=d.test_fraction,
        seed=config.train.seed, train_limit=d.train_limit, groups=groups,
    )  # fmt: skip
    log(f"data: {source.name}, {len(source.class_names)} classes, {source.channels}x{source.image_size}px; "
        f"train {len(splits['train'])} / valid {len(splits['valid'])} / test {len(splits['test'])}")  # fmt: skip
    found, dropped = None, {}
    if audit:
        splits, found, dropped = audit_for_training(config, source, splits, log, pairs=pairs, groups=groups)
    config = data_decisions(config, source, len(splits["train"]), log)
    trained = None
    if config.model.name == AUTO:
        config, trained = search_models(config, source, splits, measure=measure, log=log, budget_start=budget_start,
                                         after=after)  # fmt: skip
    config = resolve_strategy(config, source, splits, positive=positive, measure=measure, log=log)
    config = decide_run_precision(config, source, measure=measure, log=log)
    return Plan(config, splits, found, dropped, trained, groups)


def data_decisions(config: RunConfig, source: Source, n_train: int, log) -> RunConfig:
    """Fix what was read off the data (a folder's image size, whether flips keep labels, the batch size for a
    small train split) into the config."""
    if source.size_reason is not None:
        log(f"image size: {source.image_size} px ({source.size_reason})")
        config = replace(config, data=replace(config.data, image_size=source.image_size))
        config = with_decisions(config, image_size=source.size_reason)
    if source.stream_reason is not None:
        log(f"data path: {source.stream_reason}")
        config = replace(config, data=replace(config.data, stream=is_streamed(source.images)))
        config = with_decisions(config, stream=source.stream_reason)
    if config.data.flips is None and source.flip_invariant is not None:
        config = replace(config, data=replace(config.data, flips=source.flip_invariant))
    if config.train.batch_size is None:
        batch, why = default_batch_size(n_train)
        config = replace(config, train=replace(config.train, batch_size=batch))
        if why:
            log(f"batch size: {batch} ({why})")
            config = with_decisions(config, batch_size=why)
    return config
