"""`plan_budget`: how many epochs fit in `--budget-minutes`, from a short measured probe (training/clock.py corrects
the plan after every epoch)."""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, replace

import torch

from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.training.fit import build_optimizer, evaluate_loss
from cnnlab.training.progressive import epochs_that_fit, sides_text

WARMUP_STEPS = 2  # the first steps pay one-off costs (allocations, oneDNN kernel selection, compilation)
PROBE_STEPS = 8  # timed steps, at most half an epoch's (at least 3): the probe's steps are thrown away, and on a
# small folder 8 + 2 of them were more than a whole epoch of fine-tuning (8 steps); the clock re-plans from real epochs
MIN_PROBE_STEPS = 3


class BudgetTooSmall(CnnlabError):
    """Fewer epochs than a candidate needs fit in the time left (the model search skips it and says why)."""


@dataclass(frozen=True)
class BudgetPlan:
    train: TrainConfig  # with the epochs that fit
    kept_s: float  # seconds kept back for the work after training (evaluation, explain, report)
    fixed_share: float = 0.0  # of an epoch, what progressive resizing does not shrink (validation, checkpoints)


def plan_budget(
    t: TrainConfig, fabric, model, train_batches, valid_batches, log, probe_steps: int | None = None,
    epoch_limits: tuple[int, int] | None = None, *, seconds: float | None = None,
    after: tuple[float, float] = (0.0, 0.0),
) -> BudgetPlan:  # fmt: skip
    """Epochs that fit `seconds` (default: all of `t.budget_minutes`): time `probe_steps` training steps (the
    median, after warm-up; default PROBE_STEPS, at most half an epoch's) and one validation pass on a throwaway
    copy of the model (the real one, and every RNG, stay untouched), then divide. The work after training,
    `after` (validation passes of the model, seconds besides: evaluating, explaining), is kept back from it. With
    --compile the probe is compiled too and its one-off compile time comes off the budget. `epoch_limits` (least,
    most): a candidate of the model search, capped at `most` and refused (BudgetTooSmall) below `least`. Under
    progressive resizing the epochs at smaller sides are counted at their estimated share of a full-size epoch
    (training/progressive.py)."""
    seconds = t.budget_minutes * 60 if seconds is None else seconds
    if probe_steps is None:
        probe_steps = min(PROBE_STEPS, max(MIN_PROBE_STEPS, len(train_batches) // 2))
    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(model)
        optimizer = build_optimizer(probe, t)
        step_model = torch.compile(probe) if t.compile else probe
        probe.train()
        times = []
        for x, y in itertools.islice(iter(train_batches), probe_steps + WARMUP_STEPS):
            start = time.perf_counter()
            with fabric.autocast():  # the run's precision: the plan follows the measured choice
                loss, _ = probe.compute_loss(step_model(x), y, t.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        measured = sorted(times[WARMUP_STEPS:] or times)
        step_s = measured[len(measured) // 2]
        with fabric.autocast():
            evaluate_loss(probe, itertools.islice(iter(valid_batches), 1))  # warm-up for the eval shapes
            start = time.perf_counter()
            evaluate_loss(probe, valid_batches)
            valid_s = time.perf_counter() - start
    first_s = times[0]
    epoch_s = step_s * len(train_batches) + valid_s + 0.05  # + checkpoint writes
    fixed = (valid_s + 0.05) / epoch_s
    compile_s = max(first_s - step_s, 0.0) if t.compile else 0.0
    kept_s = after[0] * valid_s + after[1]
    size = x.shape[-1] if t.progressive else None  # progressive resizing: most epochs are cheaper than the probe's
    epochs = max(1, epochs_that_fit(seconds - kept_s - compile_s, epoch_s, progressive_size=size, fixed=fixed))
    extra = f", {compile_s:.0f} s compiling" if compile_s else ""
    spent = t.budget_minutes * 60 - seconds
    if spent >= 1:
        extra += f", {spent:.0f} s spent before training"
    if kept_s:
        extra += f", {kept_s:.0f} s kept for evaluation and the report"
    if size is not None:
        extra += f", by thirds at {sides_text(size)} px"
    if epoch_limits is not None:
        least, most = epoch_limits
        if epochs < least:
            left = f"{seconds - kept_s:.0f} s left of the budget"
            if kept_s:
                left += f" ({kept_s:.0f} s more kept for evaluation and the report)"
            need = f"{least} epochs need about {least * epoch_s + compile_s:.0f} s ({epoch_s:.1f} s/epoch measured)"
            raise BudgetTooSmall(f"{need}, {left}")
        epochs = min(epochs, most)
    log(f"budget {t.budget_minutes:g} min: about {epoch_s:.1f} s/epoch measured{extra} -> {epochs} epochs")
    return BudgetPlan(replace(t, epochs=epochs), kept_s, fixed)
