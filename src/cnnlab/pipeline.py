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
from cnnlab.data.features import FeatureBatches, backbone_features
from cnnlab.data.lazy import select
from cnnlab.data.sources import Source, load_source
from cnnlab.data.splits import load_splits, make_splits, save_splits
from cnnlab.engine.checkpoint import check_compatible, load_checkpoint
from cnnlab.engine.fit import EpochStats, fit, make_fabric
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.evaluate import evaluate_run
from cnnlab.evaluate.thresholds import parse_rule
from cnnlab.models import create_model, describe_model
from cnnlab.models.pretrained import OFFLINE, backbone_preprocessing, is_pretrained_name, load_pretrained
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
    config = transfer_defaults(config)
    fabric = make_fabric(config.train)
    if fabric.world_size > 1 and not dry_run:
        fabric.launch()  # re-runs this command in the other processes (or joins torchrun's)
    log = log if fabric.is_global_zero else _silent
    source = _load(config, log)
    if positive is not None and positive not in source.class_names:
        raise CnnlabError(f"unknown positive class '{positive}' (classes: {', '.join(source.class_names)})")
    splits = make_splits(
        source.labels.numpy(), source.partitions, valid_fraction=config.data.valid_fraction,
        test_fraction=config.data.test_fraction, seed=config.train.seed, train_limit=config.data.train_limit,
    )  # fmt: skip
    log(f"data: {source.name}, {len(source.class_names)} classes, {source.channels}x{source.image_size}px; "
        f"train {len(splits['train'])} / valid {len(splits['valid'])} / test {len(splits['test'])}")  # fmt: skip
    config = resolve_strategy(config, source, splits, log)
    if dry_run:
        config = replace(config, train=replace(config.train, epochs=1, devices=1, num_nodes=1))
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "dry-run"
            history = _fit_new(config, make_fabric(config.train), source, splits, run_dir, max_batches=1, log=log)
            evaluation = evaluate_run(run_dir, source=source, dry_run=True, log=log)
        return TrainResult(None, history, evaluation)
    run_dir = _shared_run_dir(fabric, runs_dir, name or default_run_name(config), force)
    history = _fit_new(config, fabric, source, splits, run_dir, log=log)
    if not fabric.is_global_zero:
        return TrainResult(run_dir, history, {})  # rank 0 evaluates and reports
    log(f"best epoch {min(history, key=lambda s: s.valid_loss).epoch} by valid loss; evaluating best.pt on test")
    evaluation = evaluate_run(run_dir, source=source, positive=positive, rule=rule, log=log)
    if report:
        from cnnlab.report.html import write_report

        log(f"report: {write_report(run_dir, source=source)}")
    log(f"run folder: {run_dir}")
    return TrainResult(run_dir, history, evaluation)


def _silent(_: str) -> None:
    pass


def _shared_run_dir(fabric, runs_dir: Path, name: str, force: bool) -> Path:
    """Rank 0 claims the run folder and tells the others its path (or the error, so no rank waits forever)."""
    claimed, error = None, None
    if fabric.is_global_zero:
        try:
            claimed = str(claim_run_dir(Path(runs_dir), name, force=force))
        except CnnlabError as exc:
            error = str(exc)
    if fabric.world_size > 1:
        claimed, error = fabric.broadcast((claimed, error), src=0)
    if error:
        raise CnnlabError(error)
    return Path(claimed)


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
    config = replace(config, train=replace(config.train, devices=1, num_nodes=1))  # resume runs in one process
    history = _fit(config, make_fabric(config.train), source, splits, run_dir, resume=last, log=log)
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


def _fit_new(config, fabric, source, splits, run_dir: Path, *, max_batches=None, log) -> list[EpochStats]:
    if not fabric.is_global_zero:
        return _fit(config, fabric, source, splits, run_dir, max_batches=max_batches, log=log)
    with creating_run_dir(run_dir):
        save_config(config, run_dir / "config.yaml")
        save_splits(splits, run_dir / "splits.json", seed=config.train.seed)
        return _fit(config, fabric, source, splits, run_dir, max_batches=max_batches, log=log)


def _fit(config: RunConfig, fabric, source: Source, splits, run_dir: Path, *, resume=None, max_batches=None, log):
    t = config.train
    norm = training_normalization(config, select(source.images, splits["train"]))
    meta = {
        "model_name": config.model.name,
        "config": config.to_dict(),
        "class_names": list(source.class_names),
        "preprocessing": {
            "image_size": source.image_size, "channels": source.channels, "crop_pct": config.data.crop_pct,
            "mean": list(norm.mean), "std": list(norm.std), "resize": "shorter side bicubic, centre crop",
        },
    }  # fmt: skip
    # a local, seeded RNG scope: init and dropout repeat exactly, the caller's global RNG is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        model = create_model(
            config.model.name, num_classes=len(source.class_names), in_channels=source.channels,
            image_size=source.image_size, options=config.model.options, strategy=config.model.strategy,
        ).to(memory_format=torch.channels_last)  # fmt: skip
        if is_pretrained_name(config.model.name) and config.model.strategy != "retrain" and resume is None:
            load_pretrained(model, config.model.weights)
        if getattr(model, "frozen", False):
            train_batches, valid_batches = _feature_batches(config, model, source, splits, norm, max_batches, log)
            model.features_input = True  # the head trains on cached features; checkpoints hold the whole model
        else:
            train_batches, valid_batches = _image_batches(config, fabric, source, splits, norm, max_batches)
        if t.budget_minutes is not None and resume is None and max_batches is None and fabric.world_size == 1:
            config = replace(config, train=plan_budget(t, fabric, model, train_batches, valid_batches, log))
            t, meta["config"] = config.train, config.to_dict()
            save_config(config, run_dir / "config.yaml")  # the planned epochs, so resume follows the same plan
        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        recipe = f"{t.optimizer} lr {t.lr} {t.schedule}, batch {t.batch_size}, {t.epochs} epochs"
        where = f"{fabric.device}" + (f" x {fabric.world_size} processes (DDP)" if fabric.world_size > 1 else "")
        log(f"model: {config.model.name}, {n_params:,} parameters ({n_train:,} trained); {recipe} on {where}")
        try:
            return fit(fabric, model, train_batches, valid_batches, t, run_dir, meta=meta, resume=resume, log=log)
        finally:
            model.features_input = False


def plan_budget(t, fabric, model, train_batches, valid_batches, log, probe_steps: int = 8):
    """Epochs that fit `t.budget_minutes`: time `probe_steps` training steps and one validation pass on a
    throwaway copy of the model (the real one, and every RNG, stay untouched), then divide. With --compile
    the probe is compiled too and its one-off compile time comes off the budget."""
    import copy
    import itertools
    import time

    from cnnlab.engine.fit import build_optimizer, cross_entropy_loss, evaluate_loss

    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(model)
        optimizer = build_optimizer(probe, t)
        loss_fn = getattr(probe, "compute_loss", cross_entropy_loss)
        step_model = torch.compile(probe) if t.compile else probe
        probe.train()
        steps = list(itertools.islice(iter(train_batches), probe_steps + 1))
        start = time.perf_counter()
        for i, (x, y) in enumerate(steps):
            if i == 1:  # the first step pays one-off costs (allocations, kernel selection, compilation)
                first_s, start = time.perf_counter() - start, time.perf_counter()
            loss, _ = loss_fn(step_model(x), y, t.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        step_s = (time.perf_counter() - start) / max(len(steps) - 1, 1)
        start = time.perf_counter()
        evaluate_loss(probe, valid_batches)
        valid_s = time.perf_counter() - start
    epoch_s = step_s * len(train_batches) + valid_s + 0.05  # + checkpoint writes
    compile_s = max(first_s - step_s, 0.0) if t.compile and len(steps) > 1 else 0.0
    epochs = max(1, int((t.budget_minutes * 60 - compile_s) // epoch_s))
    extra = f", {compile_s:.0f} s compiling" if compile_s else ""
    log(f"budget {t.budget_minutes:g} min: about {epoch_s:.1f} s/epoch measured{extra} -> {epochs} epochs")
    return replace(t, epochs=epochs)


def training_normalization(config: RunConfig, train_images: torch.Tensor) -> Normalization:
    """A pretrained backbone's own mean/std (3 channels: grey images broadcast to RGB); else the train split's."""
    if is_pretrained_name(config.model.name):
        prep = backbone_preprocessing(config.model.name)
        return Normalization(prep.mean, prep.std)
    return Normalization.from_images(train_images)


def _image_batches(config: RunConfig, fabric, source: Source, splits, norm, max_batches):
    t = config.train
    images, labels = fabric.to_device(source.images), fabric.to_device(source.labels)
    policy = policy_for(config.data.augment, flip_invariant=source.flip_invariant)
    shard = {"rank": fabric.global_rank, "world": fabric.world_size}
    train_batches = InMemoryBatches(
        images, labels, splits["train"], batch_size=t.batch_size // fabric.world_size, norm=norm, shuffle=True,
        policy=policy, seed=t.seed, drop_last=True, max_batches=max_batches, **shard,
    )  # fmt: skip
    valid_batches = InMemoryBatches(
        images, labels, splits["valid"], batch_size=1000, norm=norm, max_batches=max_batches, **shard
    )
    return train_batches, valid_batches


def _feature_batches(config: RunConfig, model, source: Source, splits, norm, max_batches, log):
    """Frozen strategies: each image through the backbone once (cached), then batches of feature vectors."""
    t, views = config.train, config.model.feature_views
    policy = policy_for(config.data.augment if views else "none", flip_invariant=source.flip_invariant)
    cache = None if max_batches else Path(config.data.root) / "cache"
    feats = {}
    for split, n_views in (("train", views), ("valid", 0)):
        idx = splits[split] if not max_batches else splits[split][: t.batch_size]
        feats[split] = backbone_features(
            model, select(source.images, idx), norm, cache_dir=cache, views=n_views, policy=policy, seed=t.seed, log=log
        )
    labels = {s: source.labels[torch.as_tensor(splits[s][: feats[s].shape[1]])] for s in feats}
    train_batches = FeatureBatches(
        feats["train"], labels["train"], batch_size=t.batch_size, shuffle=True, seed=t.seed, drop_last=True,
        max_batches=max_batches,
    )  # fmt: skip
    valid_batches = FeatureBatches(feats["valid"], labels["valid"], batch_size=1000, max_batches=max_batches)
    return train_batches, valid_batches


def transfer_defaults(config: RunConfig) -> RunConfig:
    """Pretrained backbones see images as in pretraining: folders decode at the backbone's input size with its
    crop (256 -> 224); datasets keep their native size and the model resizes them. With --image-size the
    backbone runs at that size instead. Non-pretrained models reject the transfer options."""
    name, m = config.model.name, config.model
    if not is_pretrained_name(name):
        if m.strategy not in (None, "retrain") or m.weights is not None:
            raise CnnlabError(
                f"--strategy and --weights apply to pretrained backbones ({', '.join(OFFLINE)}, timm/NAME, tv/NAME); "
                f"'{name}' trains from scratch"
            )
        return config
    data, options = config.data, dict(m.options)
    if data.image_size is not None:  # the backbone runs at the size asked for (smaller = faster)
        options.setdefault("input_size", data.image_size)
    elif data.source.startswith("folder:"):
        prep = backbone_preprocessing(name)
        data = replace(data, image_size=prep.input_size, crop_pct=prep.crop_pct)
    return replace(config, data=data, model=replace(m, strategy=m.strategy or "auto", options=options))


def resolve_strategy(config: RunConfig, source: Source, splits, log) -> RunConfig:
    """Turn strategy=auto into a concrete strategy by the course's size x similarity rule, and say why."""
    if config.model.strategy != "auto":
        if is_pretrained_name(config.model.name):
            log(f"strategy: {config.model.strategy} (chosen by you)")
        return config
    from cnnlab.transfer import choose_strategy

    train_idx = torch.as_tensor(splits["train"])
    train_images = select(source.images, train_idx)
    choice = choose_strategy(
        config.model.name, train_images, source.labels[train_idx], len(source.class_names),
        training_normalization(config, train_images), weights=config.model.weights, seed=config.train.seed,
    )  # fmt: skip
    log(f"strategy: {choice.strategy} (auto: {choice.reason})")
    return replace(config, model=replace(config.model, strategy=choice.strategy, strategy_reason=choice.reason))
