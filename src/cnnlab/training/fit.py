"""The training loop: `train_one_epoch`, `evaluate_loss`, and `fit`, which calls them once per epoch.

Lightning Fabric handles the device and precision; the loop itself stays plain. Checkpointing and early
stopping are small objects called from the loop. Validation loss is plain cross-entropy (no label
smoothing), the honest number that `best.pt` is chosen by.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError, TrainingInterrupted
from cnnlab.models.base import Classifier
from cnnlab.models.checkpoint import Checkpoint, TrainingState, save_checkpoint
from cnnlab.runs import RunFile
from cnnlab.training.clock import BudgetClock
from cnnlab.training.flips import FlipCheck
from cnnlab.training.progressive import side_for
from cnnlab.training.tensorboard import TensorBoardLog

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "seconds", "images_per_s"]


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    valid_loss: float
    valid_acc: float
    lr: float
    seconds: float  # training and validation
    images_per_s: float = math.nan  # training images per second of training (augmentation included)


class BestTracker:
    """Remembers the lowest validation loss (the course's rule for `best.pt`) and counts epochs since."""

    def __init__(self, patience: int | None, best_loss: float = math.inf, best_epoch: int = 0, bad_epochs: int = 0):
        self.patience, self.best_loss, self.best_epoch, self.bad_epochs = patience, best_loss, best_epoch, bad_epochs

    def update(self, epoch: int, valid_loss: float) -> bool:
        """Record an epoch; True when it is a new best."""
        if valid_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = valid_loss, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}


def accelerator_for(config: TrainConfig) -> str:
    """ "cuda" or "cpu" for the configured device; an impossible request (no GPU, --compile without a C++
    compiler) is a user error raised before any data is read."""
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise CnnlabError("--device cuda requested but no CUDA GPU is visible (use --device auto or cpu)")
    accelerator = "cuda" if config.device == "cuda" or (config.device == "auto" and cuda) else "cpu"
    if config.compile and accelerator == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise CnnlabError(
            "--compile on a CPU needs a C++ compiler for torch.compile's kernels (install g++, or drop --compile)"
        )
    return accelerator


def make_fabric(config: TrainConfig):
    """A Fabric for the configured device, precision and process count (DDP when devices x nodes > 1;
    on CPUs the processes talk over gloo). Call `fabric.launch()` before anything with side effects.

    A new run's `auto` precision is decided by measurement first (engine/precision.py). An `auto` left here
    (a run folder from before that, several processes) means bf16 autocast on CUDA with bf16, else fp32:
    CPUs without native bf16 train 10x slower in it.
    """
    from lightning.fabric import Fabric  # optional heavy import: Lightning (~1.5 s to import; training only)
    from lightning_utilities.core import rank_zero as rank_zero_module  # comes with Lightning

    accelerator = accelerator_for(config)
    precision = config.precision
    if precision == "auto":
        precision = "bf16-mixed" if accelerator == "cuda" and torch.cuda.is_bf16_supported() else "32-true"
    world = config.devices * config.num_nodes
    # cnnlab prints its own precision line; Lightning's "Using bfloat16 AMP" note would reach stderr first. Its
    # rank_zero_info logs through lightning_utilities' module logger, which each Lightning package renames.
    rank_zero = rank_zero_module.log
    level = rank_zero.level
    rank_zero.setLevel(logging.WARNING)
    try:
        return Fabric(
            accelerator=accelerator, devices=config.devices, num_nodes=config.num_nodes,
            strategy="ddp" if world > 1 else "auto", precision=precision,
        )  # fmt: skip
    finally:
        rank_zero.setLevel(level)


def build_optimizer(model: Classifier, config: TrainConfig) -> torch.optim.Optimizer:
    """Trainable parameters only; no weight decay on biases and norm parameters (1-d tensors), as in timm /
    torchvision references, nor on the names a model lists in `no_weight_decay()` (timm's convention); a
    model's `parameter_groups` (a pretrained backbone) may scale its lr down."""
    spec = model.parameter_groups(config.backbone_lr)
    names = model.no_weight_decay()
    exempt = {id(p) for n, p in model.named_parameters() if n in names}

    def decays(p: torch.Tensor) -> bool:
        return p.ndim > 1 and id(p) not in exempt

    groups = []
    for params, scale in spec:
        params = [p for p in params if p.requires_grad]
        for chosen, decay in (
            ([p for p in params if decays(p)], config.weight_decay),
            ([p for p in params if not decays(p)], 0.0),
        ):
            if chosen:
                groups.append({"params": chosen, "weight_decay": decay, "lr": config.lr * scale})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def build_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int, steps_done: int = 0):
    """All schedules step once per batch, so resuming mid-schedule is just loading its state.

    One-cycle warms up for a quarter of the steps (at least 2). Under 4 steps in all (a dry run, a tiny
    folder) there is no cycle to shape and the rate stays at `lr`. `steps_done` > 0 (a budget's re-plan): the
    schedule built for the new length from the rates the first one started at, moved on to that step.
    """
    if steps_done:
        for g in optimizer.param_groups:  # a schedule keeps its starting rates in the group
            g["lr"] = g.get("max_lr", g.get("initial_lr", g["lr"]))
    scheduler = _schedule(optimizer, config, steps_per_epoch)
    with warnings.catch_warnings():  # stepping without optimizer steps in between is the point here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps_done):
            scheduler.step()
    return scheduler


def _schedule(optimizer, config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle" and total >= 4:
        pct = max(0.25, 2 / total)
        max_lr = [g["lr"] for g in optimizer.param_groups]  # per group: a fine-tuned backbone keeps its lower rate
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "step":
        step = config.step_size * steps_per_epoch
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def train_one_epoch(
    fabric, model, batches: Iterable, optimizer, scheduler, label_smoothing: float, *, loss_fn, on_step=None
):
    """One pass over `batches`; returns (mean loss, accuracy, images seen over all processes). `loss_fn` is
    the plain model's `compute_loss` (`model` may be a compiled or DDP wrapper). Sums stay on the device (no
    sync per step); `on_step` gets each step's loss tensor."""
    model.train()
    loss_sum = torch.zeros((), device=fabric.device)
    correct = torch.zeros((), device=fabric.device, dtype=torch.int64)
    seen = 0
    for x, y in batches:
        loss, logits = loss_fn(model(x), y, label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss)
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if on_step:
            on_step(loss)
    totals = _reduce_sums(fabric, [loss_sum, correct.double(), torch.tensor(float(seen), device=fabric.device)])
    return totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1), int(totals[2])


def _reduce_sums(fabric, values: list[torch.Tensor]) -> list[float]:
    """Sums over all processes (identity in a single process)."""
    stacked = torch.stack([v.detach().double() for v in values])
    if fabric is not None and fabric.world_size > 1:
        stacked = fabric.all_reduce(stacked.float(), reduce_op="sum").double()
    return [float(v) for v in stacked]


def evaluate_loss(model, batches: Iterable, fabric=None, *, mirror: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` over `batches` (over every process's shard under DDP);
    with `mirror`, of the horizontally mirrored images (the flip check)."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.inference_mode():
        for x, y in batches:
            logits = model(x.flip(-1) if mirror else x).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    if fabric is not None and fabric.world_size > 1:  # outside inference mode: collectives need normal tensors
        loss_sum, correct, seen = _reduce_sums(
            fabric, [torch.tensor(v, dtype=torch.float64) for v in (loss_sum, correct, seen)]
        )
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def _agreed(fabric, epochs: int, clock: BudgetClock) -> int:
    """Under DDP every process follows rank 0's re-plan (their clocks differ by a little; their steps may not)."""
    if fabric.world_size > 1:
        clock.epochs = epochs = int(fabric.broadcast(epochs, src=0))
    return epochs


def fit(
    fabric,
    model: Classifier,
    train_batches,
    valid_batches,
    config: TrainConfig,
    run_dir: Path,
    *,
    meta: Checkpoint,
    resume: Checkpoint | None = None,
    flip_check: FlipCheck | None = None,
    clock: BudgetClock | None = None,
    log: Callable[[str], None] = print,
) -> list[EpochStats]:
    """Train `model` for `config.epochs`, writing metrics.csv, best.pt and last.pt into `run_dir`.

    `meta` (a Checkpoint without weights: model, classes, preprocessing, config) is the template of every
    checkpoint written. With `resume` (a loaded last.pt) training continues after its epoch and ends with the
    same weights as an uninterrupted run. With `flip_check`, training starts without flips and the check
    decides whether the later epochs flip (see engine/flips.py). With `clock` (a --budget-minutes run), the
    epochs are planned again after each one from their measured time and the schedule is stretched or squeezed
    to the new end (`clock.epochs` holds the final plan). With `config.progressive`, each epoch trains at the side
    training/progressive.py gives it (validation at full size). Must run inside a seeded `fork_rng()`.
    """
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, len(train_batches))
    tracker, start = BestTracker(config.patience), 1
    if resume is not None:
        model.load_state_dict(resume.weights)
        optimizer.load_state_dict(resume.training.optimizer)
        scheduler.load_state_dict(resume.training.scheduler)
        tracker = BestTracker(config.patience, **resume.best)
        torch.set_rng_state(resume.training.rng_state)
        start = resume.epoch + 1
    # compiled for the training steps only; checkpoints and validation use the plain module (same weights)
    fmodel, foptimizer = fabric.setup(torch.compile(model) if config.compile else model, optimizer)
    writer = fabric.is_global_zero  # under DDP only rank 0 touches the run folder
    watch = None
    if writer and config.logger == "tensorboard":
        watch = TensorBoardLog(run_dir, steps_per_epoch=len(train_batches), start_epoch=start, config=meta.config)
    metrics_path = run_dir / RunFile.METRICS
    if writer:
        _truncate_metrics(metrics_path, keep_through=start - 1)
    history: list[EpochStats] = []
    saved, epoch = start - 1, start
    size = meta.preprocessing.image_size if config.progressive else None  # progressive resizing: the full side
    walls, since = [], time.perf_counter()  # each epoch's wall time in full-size epochs (the budget's clock)
    try:  # around the whole loop: Ctrl-C anywhere (mid-epoch, while logging) leaves the same clear message
        while epoch <= config.epochs:
            cost = clock.cost(epoch, config.epochs) if clock is not None else 1.0  # in full-size epochs
            if size is not None and train_batches.side != (side := side_for(epoch, config.epochs, size)):
                train_batches.set_side(side)
                if writer:
                    log(f"progressive resizing: training at {side} px from epoch {epoch} (validation at {size} px)")
            stats = _run_epoch(
                fabric, fmodel, foptimizer, scheduler, train_batches, valid_batches, config, epoch, model, watch
            )
            if flip_check is not None and flip_check.ready(stats.valid_acc):  # before the checkpoints: they
                with fabric.autocast():  # carry the decision
                    _, mirrored = evaluate_loss(model, valid_batches, fabric, mirror=True)
                train_batches.set_flips(flip_check.decide(epoch, stats.valid_acc, mirrored))
            walls.append((time.perf_counter() - since) / cost)
            since = time.perf_counter()
            if clock is not None and _agreed(fabric, clock.replan(epoch, walls), clock) != config.epochs:  # before
                config, scheduler = _replanned(config, clock, optimizer, len(train_batches), epoch, log)  # the ckpts
                meta.config["train"]["epochs"] = config.epochs
            improved = tracker.update(epoch, stats.valid_loss)
            history.append(stats)
            if writer:
                append_metrics(metrics_path, stats)  # before last.pt: resume trims rows newer than it
                weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
                if improved:
                    save_checkpoint(meta.at(weights, epoch=epoch, best=tracker.state()), run_dir / RunFile.BEST)
                state = TrainingState(optimizer.state_dict(), scheduler.state_dict(), torch.get_rng_state())
                save_checkpoint(
                    meta.at(weights, epoch=epoch, best=tracker.state(), training=state), run_dir / RunFile.LAST
                )
                saved = epoch
                if watch is not None:  # right after last.pt: a resumed run's curves have every saved epoch once
                    watch.epoch(stats)
                log(_format_epoch(stats, config.epochs, improved))
            if tracker.should_stop():
                log(f"early stop: valid loss has not improved for {tracker.bad_epochs} epochs")
                break
            epoch += 1
    except KeyboardInterrupt:
        done = f"last.pt holds epoch {saved}" if saved else "no epoch finished"
        raise TrainingInterrupted(
            f"interrupted in epoch {epoch}; {done} (continue with: cnnlab train --resume {run_dir})"
        ) from None
    except OSError as exc:  # a full disk or a vanished folder while writing: the previous files stay whole
        done = f"last.pt holds epoch {saved}" if saved else "no epoch was saved"
        raise CnnlabError(
            f"could not write to {run_dir} in epoch {epoch}: {exc.strerror or exc}; {done} "
            f"(free some space, then: cnnlab train --resume {run_dir})"
        ) from exc
    finally:
        if watch is not None:
            watch.close()
    return history


def _run_epoch(
    fabric, model, optimizer, scheduler, train_batches, valid_batches, config, epoch, plain_model, watch=None
) -> EpochStats:
    train_batches.set_epoch(epoch)
    t0 = time.perf_counter()
    columns = (TextColumn(f"epoch {epoch}/{config.epochs}"), BarColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not sys.stdout.isatty()) as bar:
        task = bar.add_task("train", total=len(train_batches))

        def on_step(loss: torch.Tensor) -> None:
            bar.advance(task)
            if watch is not None:
                watch.step(loss, optimizer.param_groups[-1]["lr"])

        train_loss, train_acc, seen = train_one_epoch(
            fabric, model, train_batches, optimizer, scheduler, config.label_smoothing, on_step=on_step,
            loss_fn=plain_model.compute_loss,
        )  # fmt: skip
    train_s = time.perf_counter() - t0
    if not math.isfinite(train_loss):
        raise CnnlabError(f"training diverged: loss is {train_loss} in epoch {epoch} (lower --lr, e.g. by 10x)")
    with fabric.autocast():  # the unwrapped model: no DDP collectives during an uneven validation shard
        valid_loss, valid_acc = evaluate_loss(plain_model, valid_batches, fabric)
    lr = optimizer.param_groups[-1]["lr"]  # the head's (or only) group
    return EpochStats(epoch, train_loss, train_acc, valid_loss, valid_acc, lr, time.perf_counter() - t0, seen / train_s)


def _replanned(
    config: TrainConfig, clock: BudgetClock, optimizer, steps_per_epoch: int, done: int, log
) -> tuple[TrainConfig, torch.optim.lr_scheduler.LRScheduler]:  # fmt: skip
    """The config and schedule for the clock's new epoch count; the rate goes on from the step reached."""
    took = f"{clock.epoch_seconds:.1f} s here" + (" at full size" if config.progressive else "")
    log(f"budget: epochs take {took}: {clock.epochs} epochs in all, not {config.epochs}")
    config = replace(config, epochs=clock.epochs)
    return config, build_scheduler(optimizer, config, steps_per_epoch, steps_done=steps_per_epoch * done)


def _format_epoch(s: EpochStats, total: int, improved: bool) -> str:
    return (
        f"epoch {s.epoch:>3}/{total}  train loss {s.train_loss:.4f} acc {100 * s.train_acc:5.2f}%  "
        f"valid loss {s.valid_loss:.4f} acc {100 * s.valid_acc:5.2f}%  lr {s.lr:.2e}  {s.seconds:5.1f}s"
        + ("  * best" if improved else "")
    )


def append_metrics(path: Path, stats: EpochStats) -> None:
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        if new:
            writer.writeheader()
        row = asdict(stats)
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _truncate_metrics(path: Path, keep_through: int) -> None:
    """On resume, drop rows written after the checkpoint (an epoch interrupted between its two writes)."""
    if not path.exists():
        return
    with path.open(newline="") as fh:  # a row cut short by a kill has no whole epoch number: dropped too
        rows = [r for r in csv.DictReader(fh) if (r.get("epoch") or "").isdigit() and int(r["epoch"]) <= keep_through]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
