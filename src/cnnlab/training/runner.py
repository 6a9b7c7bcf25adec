"""`train_model`: a planned run's model, batches and training loop put together (or a head fit on frozen
features), with the decisions only training can make: the epochs a budget allows, and whether flips keep labels."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from timm.layers import convert_sync_batchnorm
from torch import nn

from cnnlab.config import RunConfig, with_decisions
from cnnlab.data.augment import policy_for
from cnnlab.data.batches import Normalization, run_batches
from cnnlab.data.sources import Source
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.checkpoint import Checkpoint, InputSpec
from cnnlab.models.pretrained import FROZEN_STRATEGIES, is_pretrained_name, load_pretrained
from cnnlab.runs import write_run_config
from cnnlab.training.budget import plan_budget
from cnnlab.training.clock import BudgetClock
from cnnlab.training.fit import EpochStats, fit
from cnnlab.training.flips import FlipCheck
from cnnlab.training.precision import decide_precision
from cnnlab.training.progressive import smallest_side
from cnnlab.training.transfer import fit_frozen_head, training_normalization, warm_start_head

AFTER_HEAD_SHARE = 0.15  # of a budget: kept after a frozen head's fit for scoring (training/scale.py sizes the data
# so that one pass over every image used takes at most half the budget; the scored splits are a fifth of them)


def train_model(
    config: RunConfig, fabric, source: Source, splits, run_dir: Path, *, resume=None, max_batches=None,
    epoch_limits: tuple[int, int] | None = None, budget_start: float | None = None,
    after: tuple[float, float] = (0.0, 0.0), log,
) -> tuple[RunConfig, list[EpochStats]]:  # fmt: skip
    """Model, batches and the loop (or a head on frozen features) into `run_dir`; returns the config with what
    training decided (budget epochs, measured flips, the head's regularisation) and the history. With a budget,
    config.yaml is written once the epochs are planned and last.pt carries each re-plan (training/clock.py), so a
    resumed run follows the same plan. Fine-tuning starts from a head fit on the frozen features.
    `epoch_limits`: see `plan_budget` (a search candidate). `budget_start` (time.perf_counter() when the command
    began; default now) and `after` (the work after training: validation passes, seconds besides) make the budget
    the whole command's: what came before training is spent from it, and what comes after is kept back."""
    t = config.train
    norm = training_normalization(config, source.images, splits["train"])
    inputs = InputSpec(source.image_size, source.channels, norm.mean, norm.std, config.data.crop_pct)
    meta = Checkpoint(config.model.name, list(source.class_names), inputs, config.to_dict())  # weights come later
    # a local, seeded RNG scope: init and dropout repeat exactly, the caller's global RNG is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        model = build_model(config, source)
        if starts_pretrained(config) and resume is None:
            load_pretrained(model, config.model.weights)
        if model.frozen:  # a linear head on cached features, fit to convergence: no epochs
            stats, config = fit_frozen_head(
                model, config, source, splits, norm, run_dir, meta, writer=fabric.is_global_zero,
                dry_run=max_batches is not None, log=log, deadline=_head_deadline(t, budget_start, after),
                shared=fabric.world_size > 1,
            )  # fmt: skip
            return config, [stats]
        if is_pretrained_name(config.model.name) and config.model.strategy == "fine-tune" and resume is None:
            warm_start_head(model, config, source, splits, norm, dry_run=max_batches is not None, log=log,
                            shared=fabric.world_size > 1)  # fmt: skip
        if t.progressive:
            _check_progressive(model, config.model.name, source, norm)
        policy = policy_for(config.data.augment, flip_invariant=bool(config.data.flips))  # undecided: off for now
        train_batches, valid_batches = run_batches(
            fabric.to_device(source.images), fabric.to_device(source.labels), splits, batch_size=t.batch_size,
            norm=norm, policy=policy, seed=t.seed, max_batches=max_batches, rank=fabric.global_rank,
            world=fabric.world_size,
        )  # fmt: skip
        clock = None
        if t.budget_minutes is not None and resume is None and max_batches is None:
            start = time.perf_counter() if budget_start is None else budget_start
            deadline = start + t.budget_minutes * 60  # the probe is spent from the budget too
            plan = plan_budget(t, fabric, model, train_batches, valid_batches, log, epoch_limits=epoch_limits,
                               seconds=deadline - time.perf_counter(), after=after)  # fmt: skip
            if fabric.world_size > 1:  # every process follows rank 0's measured plan
                plan = fabric.broadcast(plan, src=0)
            config = replace(config, train=plan.train)
            t, meta.config = config.train, config.to_dict()
            clock = BudgetClock(deadline - plan.kept_s, t.epochs, most=epoch_limits[1] if epoch_limits else None,
                                progressive_size=source.image_size if t.progressive else None,
                                fixed_share=plan.fixed_share)  # fmt: skip
            write_run_config(run_dir, config)  # the planned epochs, so resume follows the same plan
        model, synced = _synced_batch_norm(model, fabric, t.batch_size)
        if synced is not None:
            log(f"batch norm: {synced}")
            config = with_decisions(config, batch_norm=synced)
        _log_model(config, model, fabric, log)
        decided: dict[str, tuple[bool, str]] = {}
        flip_check = _flip_check(config, source, meta, decided, log)
        history = fit(
            fabric, model, train_batches, valid_batches, t, run_dir, meta=meta, resume=resume, flip_check=flip_check,
            clock=clock, log=log,
        )  # fmt: skip
    if clock is not None:  # the plan as re-planned during training (last.pt already carries it)
        config = replace(config, train=replace(config.train, epochs=clock.epochs))
    if "flips" in decided:
        flips, why = decided["flips"]
        config = with_decisions(replace(config, data=replace(config.data, flips=flips)), flips=why)
    return config, history


def _synced_batch_norm(model: nn.Module, fabric, batch: int) -> tuple[nn.Module, str | None]:
    """Batch norm trained across DDP processes normalises each process's share of a batch by that share's statistics;
    synchronised (what Lightning's `sync_batchnorm=True` applies), every share is normalised by the whole batch's.
    timm's conversion, as it also keeps the activation fused into timm's norm layers (BatchNormAct2d), which PyTorch's
    own would drop. PyTorch synchronises GPU (and XPU/HPU) tensors only: CPU processes keep their own statistics,
    and the run says so. Returns the model and what was done (None: one process, or no batch norm)."""
    world = fabric.world_size
    if world == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model, None
    if fabric.device.type == "cpu":
        return model, (
            f"per process: SyncBatchNorm needs GPU tensors, so each of the {world} CPU processes normalises its "
            f"{batch // world} images of each batch of {batch} by their own statistics"
        )  # fmt: skip
    return convert_sync_batchnorm(model), f"SyncBatchNorm: statistics over all {world} processes' share of each batch"


def _head_deadline(t, budget_start: float | None, after: tuple[float, float]) -> float | None:
    """When a frozen head's L2 path must stop under a budget: before the work after it (scoring the validation and
    test splits, at most AFTER_HEAD_SHARE of the budget on the data a budget samples (training/scale.py), and
    `after`'s seconds besides: explaining)."""
    if t.budget_minutes is None:
        return None
    start = time.perf_counter() if budget_start is None else budget_start
    return start + 60 * t.budget_minutes * (1 - AFTER_HEAD_SHARE) - after[1]


def _check_progressive(model: torch.nn.Module, name: str, source: Source, norm: Normalization) -> None:
    """A model whose layers are sized for its input (a flatten into a linear layer) cannot train on smaller
    images: said before any epoch runs, on a batch made as the training batches are (normalised: grey images
    meet a backbone's RGB statistics as three channels)."""
    side = smallest_side(source.image_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(norm.apply(torch.zeros(2, source.channels, side, side, dtype=torch.uint8)))
    except (RuntimeError, ValueError) as exc:
        raise CnnlabError(
            f"--progressive trains on {side}-px images, but {name} only takes {source.image_size} px ({exc}); "
            "drop --progressive or pick a model with global pooling (e.g. resnet_small)"
        ) from None
    finally:
        model.train(was_training)


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
        current = RunConfig.from_dict(meta.config)  # as training left it (a budget re-plan may have changed it)
        meta.config = with_decisions(replace(current, data=replace(current.data, flips=flips)), flips=why).to_dict()

    log("flips: off until measured (valid accuracy as is vs mirrored, once the model beats chance)")
    return FlipCheck(len(source.class_names), record=record)


def build_model(config: RunConfig, source: Source) -> torch.nn.Module:
    """The run's model, untrained (pretrained weights are loaded by the caller), channels_last."""
    return create_model(
        config.model.name, num_classes=len(source.class_names), in_channels=source.channels,
        image_size=source.image_size, options=config.model.options, strategy=config.model.strategy,
    ).to(memory_format=torch.channels_last)  # fmt: skip


def starts_pretrained(config: RunConfig) -> bool:
    """Whether training starts from a pretrained backbone's weights (not `--strategy retrain`)."""
    return is_pretrained_name(config.model.name) and config.model.strategy != "retrain"


def decide_run_precision(config: RunConfig, source: Source, *, measure: bool, log) -> RunConfig:
    """`precision: auto` made concrete by timing this model on this machine (training/precision.py); heads on
    frozen features are fit in fp32 and need no decision. The probe's model is the one training starts from:
    its seed, and its pretrained weights where it has them (a randomly initialised EfficientNet's bf16 loss
    differed from fp32's by 0.5-8% by init seed, the pretrained one's by 0.6-2.4%)."""
    if config.model.strategy in FROZEN_STRATEGIES:
        return config
    channels = 3 if is_pretrained_name(config.model.name) else source.channels  # grey broadcasts to RGB there

    def starting_model() -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # the run's init, the caller's RNG untouched
            torch.manual_seed(config.train.seed)
            model = build_model(config, source)
        if starts_pretrained(config):
            load_pretrained(model, config.model.weights)
        return model

    return decide_precision(
        config, starting_model, num_classes=len(source.class_names), in_channels=channels,
        image_size=source.image_size, measure=measure, log=log,
    )  # fmt: skip
