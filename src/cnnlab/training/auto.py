"""`--model auto`, the default for `folder:` sources: the model for a folder chosen by measurement, within a time
budget, from a portfolio of candidates.

Before the data is read (`model_before_data`), the folder's listing and image headers settle what needs no
measurement: a named dataset gets the course's default CNN (with --budget-minutes >= LARGE_BUDGET_MINUTES, the
larger recipe where its measured speed fits LARGE_MIN_EPOCHS: `recipe_for_budget`); many small images per class
(>= LARGE_PER_CLASS) get the from-scratch CNN at their own size (Fashion-MNIST, 6,000 per class: 93.8% in 5
minutes; a frozen backbone head about 85%). Every other folder is searched (`search_models`), cheapest candidate
first, on the validation split (the test split is never touched):

1. the ImageNet backbone's frozen candidates (transfer.py; one cached backbone pass, a logistic-regression head
   each, cross-validated when the validation split is small);
2. the from-scratch CNN, only where it can win: images smaller than PHOTO_SIDE (on 8-px digits it did; on photo
   folders of a few hundred images it scored 62.5% where the frozen head scored 85%);
3. fine-tuning the backbone (head first on the frozen features, then all but its first quarter with layer-wise
   learning rates, batch-norm statistics kept, augmentation and the measured flips, best epoch by validation), for
   photos, if at least FINE_TUNE_EPOCHS[0] epochs fit in what is left of the budget once the work after training
   (scoring, explaining for the report) is kept back: its cost is measured on a few steps first. On small images
   upscaled to 224 px it lost on both folders measured and cost minutes: skipped.

The budget (`--budget-minutes`, default BUDGET_MINUTES) is the whole command's: it runs from the command's start.

Every family's candidate answers the same validation images, and those answers are scored by one metric
(training/evidence.py: log loss, which weighs how sure each answer is; with --positive, that class's AUC, the ranking
the user asked for). A lead within one paired standard error of the comparison (at least evidence.MIN_MARGIN; two for
a trained candidate over a cheaper one, TRAINED_LEAD, since its best epoch was picked on those images) is a tie,
which goes to the cheaper, more regularised candidate: frozen over from-scratch over fine-tuned (30 validation images:
one image is 3.3 points of accuracy, and a fine-tuned network's lead of one image over a frozen head that cross-
validated better is no evidence; accuracy is shown beside the compared score). A trained winner is kept as it is
(`Trained`), not trained again. Every candidate, its score, seconds and status (chosen, or skipped and why) is one
table, printed and kept in config.yaml (`model.strategy_candidates`) and the report.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import DEFAULT_MODEL, RunConfig, TrainConfig, with_decisions
from cnnlab.data.batches import default_batch_size
from cnnlab.data.lazy import select
from cnnlab.data.sources import PHOTO_SIDE, FolderScan, Source, scan_folder
from cnnlab.errors import TrainingInterrupted
from cnnlab.models.checkpoint import load_checkpoint
from cnnlab.predict.infer import model_from_checkpoint, predict_logits
from cnnlab.runs import RunFile
from cnnlab.training import ensemble, evidence
from cnnlab.training.budget import BudgetTooSmall
from cnnlab.training.fit import EpochStats, accelerator_for, make_fabric
from cnnlab.training.precision import step_seconds
from cnnlab.training.progressive import epochs_that_fit, sides_text
from cnnlab.training.runner import build_model, decide_run_precision, train_model
from cnnlab.training.transfer import resolve_strategy, resolve_strategy_choice, transfer_defaults

AUTO = "auto"
BACKBONE = "efficientnet_lite0"  # the offline ImageNet backbone (its weights ship with pip)
LARGE_PER_CLASS = 1000  # images per class: at or above it a from-scratch CNN has enough to learn from
TIE = 0.005  # validation accuracy: this close to 100%, a trained candidate could only tie
BUDGET_MINUTES = 5.0  # the search's default budget (2 CPU cores: frozen candidates, then fine-tuning if it fits)
FINE_TUNE_EPOCHS = (3, 12)  # fewest worth running, most (small folders overfit after that)
SCRATCH_SHARE = 0.5  # of the time left: the from-scratch candidate's most, leaving the rest for fine-tuning
SCRATCH_EPOCHS = (3, 40)  # fewest worth running, most (Fashion-MNIST at 100 per class, 28 px: 80.3% test after 10,
# 81.2% after 40, 0.3 s each: bench/RESULTS.md)
SMALL_IMAGES_NO_FINE_TUNE = (
    "skipped: small images (fine-tuning at 224 px lost to the other candidates on 8-px digits and 28-px "
    "Fashion-MNIST at 100 per class, and took most of the budget: bench/RESULTS.md)"
)
FROZEN_SHARE = 0.6  # of the search's time: the frozen candidates' features and heads at most (large data)
TRAIN_OVER_INFERENCE = 3  # a training step's work per image, at least, in frozen-pass forwards (forward, and the
# backward's two: gradients of the inputs and of the weights); measured here it is 5-10x (bench/RESULTS.md)
MIN_SECONDS = 10  # left of the budget: below this a trained candidate is not started
TAIL_SECONDS = 10  # kept after the search: the chosen frozen head refit, its checkpoint, the run folder (2-5 s here)
LARGE_BUDGET_MINUTES = 15.0  # a named dataset's budget from which the larger recipe is considered
LARGE_MIN_EPOCHS = 30  # its epochs needed to pass the course CNN (Fashion-MNIST: 93.9% after 34, 94.15% after 38;
# the course CNN 93.6-94.0% at any budget: stretched to 30 minutes it overfits, 93.56%), counted as the budget plans
# them (progressive resizing's smaller epochs at their cost)
LARGE_MODEL = "resnet_small"
LARGE_RECIPE = {  # recipes/fashion-large.yaml's training settings (a flag or config value the user gave wins)
    "optimizer": "sgd", "nesterov": True, "momentum": 0.9, "lr": 0.1, "weight_decay": 5e-4, "label_smoothing": 0.1,
    "batch_size": 256, "progressive": True,
}  # fmt: skip
FAMILY_ORDER = {"frozen": 0, "scratch": 1, "fine-tune": 2}  # cheapest, most regularised first: ties go that way
TRAINED_LEAD = 2.0  # paired standard errors by which a trained candidate must lead a cheaper one: its best epoch was
# picked on the same validation images, so its score there is optimistic (caltech12: a fine-tuned net 0.0114 nats
# ahead of the frozen head, 1.2 standard errors, from one image the head got wrong; 98.96% test against 100%)
VALID_SHARE = 0.1  # an epoch's validation pass, as a share of its training time (the budget planner measures it)
AfterWork = Callable[..., tuple[float, float]]  # (config, splits, least=False) -> the command's work after training


@dataclass
class Trained:
    """A search candidate's finished training (best.pt, last.pt, metrics.csv in `folder`), adopted as the run."""

    folder: Path
    history: list[EpochStats]

    def move_into(self, run_dir: Path) -> None:
        for path in self.folder.iterdir():
            if path.name != RunFile.CONFIG:  # the pipeline writes the final config.yaml
                shutil.move(str(path), run_dir / path.name)
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Row:
    """One line of the candidate table."""

    candidate: str
    family: str  # frozen | scratch | fine-tune | ensemble
    valid_accuracy: float | None = None  # on the validation split
    cv_accuracy: float | None = None  # frozen candidates on a small validation split: the k-fold mean
    spread: float | None = None  # and its standard deviation
    seconds: float = 0.0
    status: str = ""  # chosen | skipped: why | (empty: measured, not chosen)
    config: RunConfig | None = None
    trained: Trained | None = None
    valid_probs: np.ndarray | None = field(default=None, repr=False)  # [valid images, classes]: what is compared
    valid_score: float | None = None  # the compared metric (evidence.py: log loss, or AUC) on those images
    margin: float | None = None  # how far below the top score this candidate still ties with it
    pass_s: float = 0.0  # a trained candidate: seconds its best epoch took to answer the validation images
    l2: float | None = None  # a frozen candidate: its head's L2 strength (the final fit's path starts there)
    image_s: float = 0.0  # the frozen family: seconds per image of its backbone pass (0: features from the cache)

    def record(self) -> dict:
        out = {"candidate": self.candidate, "valid_accuracy": self.valid_accuracy, "seconds": round(self.seconds, 1),
               "status": self.status or "measured"}  # fmt: skip
        if self.cv_accuracy is not None:
            out["cv_accuracy"], out["spread"] = self.cv_accuracy, self.spread
        if self.valid_score is not None:
            out["valid_score"], out["tie_margin"] = round(self.valid_score, 4), round(self.margin, 4)
        if self.l2 is not None:
            out["l2"] = self.l2
        return out

    def line(self) -> str:
        score = "-" if self.valid_accuracy is None else f"{100 * self.valid_accuracy:.2f}%"
        cv = "" if self.cv_accuracy is None else f"{100 * self.cv_accuracy:.2f} +- {100 * self.spread:.2f}"
        compared = "" if self.valid_score is None else f"{self.valid_score:.4f} +- {self.margin:.4f}"
        return f"  {self.candidate:<50} {score:>8} {cv:>15} {self.seconds:6.0f} s  {compared:>16}  {self.status}"


def model_before_data(config: RunConfig, log: Callable[[str], None], scan: FolderScan | None = None) -> RunConfig:
    """`auto` resolved where the folder's listing and headers decide (`scan`: the folder's, when the caller read it
    already); otherwise left `auto` for `search_models` (photos then decode at the backbone's input size and crop)."""
    if config.model.name != AUTO:
        return config
    if not config.data.source.startswith("folder:"):
        if (config.train.budget_minutes or 0) >= LARGE_BUDGET_MINUTES:
            return config  # the larger recipe's speed is measured once the data is read (`recipe_for_budget`)
        return _chosen(config, DEFAULT_MODEL, "a named dataset: the course's default CNN")
    if config.model.strategy not in (None, AUTO):
        why = f"--strategy {config.model.strategy} applies to a pretrained backbone"
        log(f"model: {BACKBONE} (auto: {why})")
        return with_decisions(replace(config, model=replace(config.model, name=BACKBONE)), model=why)
    scan = scan or scan_folder(config.data)
    if scan.median_side >= PHOTO_SIDE:
        log(f"model: auto, photos (median shorter side {scan.median_side} px): {BACKBONE}'s candidates measured")
        return replace(config, data=transfer_defaults(_named(config, BACKBONE)).data)
    if scan.images_per_class >= LARGE_PER_CLASS:
        why = (f"{scan.images_per_class:.0f} small images per class (median side {scan.median_side} px): the "
               "from-scratch CNN at their own size")  # fmt: skip
        return _chosen(config, DEFAULT_MODEL, why, log=log)
    return config


def command_minutes(config: RunConfig) -> float | None:
    """The whole command's budget in minutes: --budget-minutes, or BUDGET_MINUTES for a folder's model search
    (None: unbounded)."""
    if config.train.budget_minutes is not None:
        return config.train.budget_minutes
    return BUDGET_MINUTES if config.model.name == AUTO and config.data.source.startswith("folder:") else None


def recipe_for_budget(config: RunConfig, source: Source, splits, *, measure: bool, log) -> RunConfig:
    """A named dataset with a long budget: the larger recipe (LARGE_MODEL, LARGE_RECIPE) where at least
    LARGE_MIN_EPOCHS of it fit in the budget at the speed measured here (a few training steps in the precision
    this machine trains it fastest in); else the course CNN. Machines differ: an AVX2 CPU without bf16 runs the
    larger net at about half the speed."""
    budget = config.train.budget_minutes
    if not measure:
        return _chosen(config, DEFAULT_MODEL, "a named dataset, speed not measured (dry run): the course's CNN", log)
    large = replace(config, model=replace(config.model, name=LARGE_MODEL),
                    train=_large_train(config.train, default_batch_size(len(splits["train"]))[0]))  # fmt: skip
    if accelerator_for(config.train) == "cuda":  # the steps are timed on the CPU; a GPU runs this net in seconds
        return _chosen(large, LARGE_MODEL, f"the larger recipe: a CUDA GPU, {budget:g} minutes", log)
    said: list[str] = []  # the larger net's precision line, printed only if it is chosen
    large = decide_run_precision(large, source, measure=True, log=said.append)
    t = large.train
    shape = (t.batch_size, source.channels, source.image_size, source.image_size)
    step = step_seconds(build_model(large, source), shape, len(source.class_names), t.precision)
    epoch_s = step * -(-len(splits["train"]) // t.batch_size) * (1 + VALID_SHARE)
    # counted as the budget's plan will count them: under progressive resizing most epochs cost less than this one
    size = source.image_size if t.progressive else None
    epochs = epochs_that_fit(budget * 60, epoch_s, progressive_size=size, fixed=VALID_SHARE / (1 + VALID_SHARE))
    at = f", by thirds at {sides_text(size)} px" if size else ""
    measured = (f"{epochs} epochs of {LARGE_MODEL} fit in {budget:g} minutes ({1000 * step:.0f} ms per full-size step, "
                f"measured{at})")  # fmt: skip
    if epochs >= LARGE_MIN_EPOCHS:
        for line in said:
            log(line)
        return _chosen(large, LARGE_MODEL, f"the larger recipe: {measured}", log)
    why = f"the course's CNN: only {measured}, the larger recipe needs {LARGE_MIN_EPOCHS} to pass it"
    return _chosen(config, DEFAULT_MODEL, why, log)


def _large_train(t: TrainConfig, default_batch: int) -> TrainConfig:
    """`t` with LARGE_RECIPE's settings where `t` keeps the default (what a user set is kept; the batch size was
    already set to the data's default, `default_batch`)."""
    defaults = replace(TrainConfig(), batch_size=default_batch)
    return replace(t, **{k: v for k, v in LARGE_RECIPE.items() if getattr(t, k) == getattr(defaults, k)})


def search_models(
    config: RunConfig, source: Source, splits, *, measure: bool, log: Callable[[str], None],
    budget_start: float | None = None, after: AfterWork | None = None,
) -> tuple[RunConfig, Trained | None]:  # fmt: skip
    """The portfolio measured on validation within the budget; returns the winner's config (the table under
    `model.strategy_candidates`) and, when the winner was trained here, its training. The budget runs from
    `budget_start` (the command's start: loading and the audit are spent from it; default now); a trained candidate
    keeps back `after(its config, splits)`, the command's work once training ends (validation passes of the model at
    the speed its probe measures, seconds besides: scoring, explaining for the report), so the whole command ends
    within the budget whichever candidate wins (a frozen winner's work after training is about the same)."""
    if not config.data.source.startswith("folder:"):
        return recipe_for_budget(config, source, splits, measure=measure, log=log), None
    small_images = source.image_size < PHOTO_SIDE
    if not measure or len(splits["valid"]) == 0:
        why = "not measured (dry run or no validation split)"
        if small_images:
            return _chosen(config, DEFAULT_MODEL, f"small images, {why}: the from-scratch CNN", log), None
        frozen = resolve_strategy(_named(config, BACKBONE), source, splits, positive=None, measure=False, log=log)
        return with_decisions(frozen, model=f"photos, {why}: {BACKBONE}"), None
    rows: list[Row] = []
    try:
        end = (time.perf_counter() if budget_start is None else budget_start) + 60 * (
            config.train.budget_minutes or BUDGET_MINUTES
        )
        winner, verdict = _measure(config, source, splits, rows, small_images, end, after or _nothing_after, log)
    except BaseException as exc:  # nothing of the search is left behind; Ctrl-C stops the whole run
        for row in rows:
            if row.trained is not None:
                row.trained.discard()
        if isinstance(exc, TrainingInterrupted):
            raise TrainingInterrupted("interrupted during the model search; nothing was saved") from None
        raise
    log(f"  {'candidate':<50} {'valid':>8} {'cross-validated':>15} {'time':>8}  {'compared':>16}")
    for row in rows:
        log(row.line())
    why = _decision(winner, rows, verdict, config.evaluation.positive, len(splits["valid"]))
    log(f"model: {winner.config.model.name} {winner.config.model.strategy or ''} ({why})".replace("  ", " "))
    if winner.trained is None and winner.config.train.budget_minutes is None:  # its head's fit keeps to the budget
        winner.config = replace(winner.config, train=replace(winner.config.train, budget_minutes=BUDGET_MINUTES))
    model = replace(winner.config.model, strategy_candidates=[r.record() for r in rows])
    if winner.trained is not None and model.strategy is not None:
        model = replace(model, strategy_reason=why)
    decided = {"model": why} if verdict is None else {"model": why, "ensemble": verdict}
    return with_decisions(replace(winner.config, model=model), **decided), winner.trained


def _decision(winner: Row, rows: list[Row], verdict: str | None, positive: str | None, n_valid: int) -> str:
    """Why `winner` was kept, as printed and recorded under `decisions: model` (`verdict`: the ensemble's line)."""
    if winner.family == "ensemble":
        return (f"{evidence.metric_name(positive)} on the same {n_valid} images, cross-fitted: the weighted ensemble "
                f"beats the best single candidate by more than one paired standard error ({verdict})")  # fmt: skip
    compared = [r for r in rows if r.valid_score is not None]
    best_by = evidence.best_by(positive) if compared else "highest validation accuracy"
    score = winner.valid_score if compared else winner.valid_accuracy
    return (f"{best_by} of {len(compared) or 'the'} candidates on the same {n_valid} images: {winner.candidate} "
            f"({score:.4f}; a lead within one paired standard error, at least {evidence.MIN_MARGIN}, is a tie, which "
            f"goes to frozen, then from-scratch, then fine-tuned; a trained candidate must lead a cheaper one by "
            f"{TRAINED_LEAD:g} standard errors)")  # fmt: skip


def _measure(config: RunConfig, source: Source, splits, rows: list[Row], small_images: bool, end: float,
             after: AfterWork, log) -> tuple[Row, str | None]:  # fmt: skip
    """Append the candidates' rows to `rows`, cheapest first, within the budget ending at `end` (perf_counter); the
    winner's row (the losers' trained folders are removed) and the ensemble's verdict (None: not tried)."""
    minutes = config.train.budget_minutes or BUDGET_MINUTES
    deadline = end - TAIL_SECONDS
    log(f"model: auto, measuring candidates on {len(splits['valid'])} validation images within {minutes:g} min")
    rows += _frozen_rows(config, source, splits, _indented(log),
                         deadline=time.perf_counter() + FROZEN_SHARE * (deadline - time.perf_counter()))  # fmt: skip
    if small_images:
        budget = (deadline - time.perf_counter()) * SCRATCH_SHARE
        scratch = _named(config, DEFAULT_MODEL)
        rows.append(_trained_row(scratch, "scratch", source, splits, budget, SCRATCH_EPOCHS, after(scratch, splits),
                                 log))  # fmt: skip
    if small_images:
        rows.append(Row(f"{BACKBONE} fine-tuned", "fine-tune", status=SMALL_IMAGES_NO_FINE_TUNE))
    else:
        perfect = max((r.valid_accuracy or 0.0 for r in rows), default=0.0) >= 1 - TIE
        tuned = _fine_tune_recipe(config)
        left = deadline - time.perf_counter()
        least = FINE_TUNE_EPOCHS[0] * len(splits["train"]) * TRAIN_OVER_INFERENCE * max(r.image_s for r in rows)
        if MIN_SECONDS <= left < least:  # measuring its precision and steps would cost a minute for nothing
            rows.append(Row(f"{BACKBONE} fine-tuned", "fine-tune", status=(
                f"skipped: {FINE_TUNE_EPOCHS[0]} epochs need at least {least:.0f} s ({TRAIN_OVER_INFERENCE} x the "
                f"frozen pass's {1000 * max(r.image_s for r in rows):.1f} ms per image, {len(splits['train']):,} "
                f"training images), {max(left, 0):.0f} s left")))  # fmt: skip
        else:
            rows.append(_trained_row(tuned, "fine-tune", source, splits, left, FINE_TUNE_EPOCHS,
                                     _with_room_for_ensemble(after(tuned, splits), rows), log,
                                     pointless=perfect))  # fmt: skip
    positive = config.evaluation.positive
    positive_index = None if positive is None else source.class_names.index(positive)
    valid_labels = source.labels[torch.as_tensor(splits["valid"])].numpy()
    winner = _pick(rows, valid_labels, positive_index, seed=config.train.seed)
    combined, verdict = _ensemble_row(rows, valid_labels, positive_index, config, source, splits, deadline, after,
                                      log)  # fmt: skip
    if combined is not None:
        winner.status, combined.status = "", "chosen"
        rows.append(combined)
        winner = combined
    for row in rows:
        if row.trained is not None and row is not winner:
            row.trained.discard()
    return winner, verdict


def _with_room_for_ensemble(work: tuple[float, float], rows: list[Row]) -> tuple[float, float]:
    """The last trained candidate's work after training (validation passes, seconds), kept back as if it ends up in
    an ensemble with every candidate measured before it: each pass then costs every member's (counted at this
    candidate's own pass, the largest network), and a frozen member's head is fit and timed (TAIL_SECONDS, on top of
    the TAIL_SECONDS the search keeps for the final one). Without it the candidate trains to the end of the budget
    and an ensemble that wins on evidence is dropped for want of time (blood cells: a 0.048 log-loss gain, +- 0.031,
    'its evaluation and explaining would take about 23 s, 0 s left'). On blood cells it keeps back 42 s instead of
    about 12 s: an epoch and a half of fine-tuning (bench/RESULTS.md)."""
    members = sum(r.valid_probs is not None and r.config is not None for r in rows)
    if members == 0:
        return work
    return work[0] * (1 + members), work[1] + 2 * TAIL_SECONDS


def _fine_tune_recipe(config: RunConfig) -> RunConfig:
    """The backbone fine-tuned as `--strategy fine-tune` trains it, with the run's rate and augmentation (by default
    a 3e-3 peak for the head, the backbone's top layer a tenth of it and layer-wise below, models/pretrained.py;
    light augmentation). The search used to fine-tune at 1e-3 with standard augmentation: fine in 12 epochs on a
    Zen 5, but in the 5-10 that fit on a Zen 4 blood cells reached a validation log loss of 0.58 (test 89.38%)
    where this recipe reached 0.30 (test 90.00%), same split and epochs (bench/RESULTS.md)."""
    tuned = _named(config, BACKBONE)
    return replace(tuned, model=replace(tuned.model, strategy="fine-tune"))


def _frozen_rows(config: RunConfig, source: Source, splits, log, *, deadline: float) -> list[Row]:
    """The backbone's frozen candidates, one row each (the one transfer.py would choose marked); their heads' L2
    paths stop at `deadline` (large data: the features of a sampled folder, then five heads, in FROZEN_SHARE)."""
    started = time.perf_counter()
    frozen, chosen = resolve_strategy_choice(
        _named(config, BACKBONE), source, splits, positive=config.evaluation.positive, measure=True, log=log,
        measure_large=True,  # on large data too: the search compares them with the trained candidates
        deadline=deadline,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    rows = []
    for record in frozen.model.strategy_candidates or []:
        pick = record.get("chosen", False)
        cv = next((v for k, v in record.items() if k.startswith("cv") and k.endswith("accuracy")), None)
        label = f"{BACKBONE} frozen: {record['candidate']}"
        row = Row(label, "frozen", record["valid_acc"], cv, record.get("cv_spread"), l2=record.get("l2"))
        if pick:  # the one the frozen family would use: it carries the pass's time, the config, its answers
            row.seconds, row.config = seconds, frozen
            row.valid_probs = None if chosen is None or chosen.valid_probs is None else chosen.valid_probs.numpy()
            row.image_s = 0.0 if chosen is None else chosen.image_s
        rows.append(row)
    return rows


def _trained_row(
    config: RunConfig, family: str, source: Source, splits, seconds_left: float, epoch_limits,
    after: tuple[float, float], log, pointless: bool = False,
) -> Row:  # fmt: skip
    """Train one candidate into a temporary folder within `seconds_left`, keeping back `after` (validation passes,
    seconds); a row with its best validation epoch. `pointless`: another candidate already scores 100% on
    validation, so this one could only tie."""
    label = {"scratch": f"{DEFAULT_MODEL} (from scratch)", "fine-tune": f"{BACKBONE} fine-tuned"}[family]
    if seconds_left < MIN_SECONDS:
        return Row(label, family, status=f"skipped: the budget is spent ({max(seconds_left, 0):.0f} s left)")
    if pointless:
        return Row(label, family, status="skipped: a candidate already scores 100% on validation (could only tie)")
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-candidate-"))
    log(f"candidate: {label}, up to {seconds_left:.0f} s")
    config = decide_run_precision(config, source, measure=True, log=log)
    # spent from `seconds_left` from here on: the precision's timing, fine-tuning's head fit first, the probe
    config = replace(config, train=replace(config.train, budget_minutes=seconds_left / 60))
    compared = (after[0] + 1, after[1])  # the search's own pass: its best epoch answering the validation images
    try:
        trained_config, history = train_model(
            config, make_fabric(_one_process(config.train)), source, splits, folder, epoch_limits=epoch_limits or
            (1, config.train.epochs), budget_start=started, after=compared, log=_indented(log),
        )  # fmt: skip
    except BudgetTooSmall as exc:
        shutil.rmtree(folder, ignore_errors=True)
        return Row(label, family, seconds=time.perf_counter() - started, status=f"skipped: {exc}")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    best = min(history, key=lambda s: s.valid_loss)
    label += f", {len(history)} epochs"
    trained_config = replace(trained_config, train=replace(trained_config.train, budget_minutes=None))
    scoring = time.perf_counter()
    probs = _valid_probabilities(folder / RunFile.BEST, source, splits)
    return Row(label, family, round(best.valid_acc, 4), seconds=time.perf_counter() - started, config=trained_config,
               trained=Trained(folder, history), valid_probs=probs, pass_s=time.perf_counter() - scoring)  # fmt: skip


def _ensemble_row(rows: list[Row], labels: np.ndarray, positive_index: int | None, config: RunConfig, source: Source,
                  splits, deadline: float, after: AfterWork, log) -> tuple[Row | None, str | None]:  # fmt: skip
    """The measured candidates' weighted ensemble (training/ensemble.py) as a trained row, when its cross-fitted
    validation evidence beats the best single candidate by more than one paired standard error and the ensemble's
    work after training (every member answers each image) fits in what is left of the budget; else None. A frozen
    member's head is fit here (its features are cached: seconds). Also the verdict (None: fewer than two candidates)."""
    library = [r for r in rows if r.valid_probs is not None and r.config is not None]
    if len(library) < 2:
        return None, None
    started = time.perf_counter()
    chosen = ensemble.select([r.valid_probs for r in library], labels, positive_index, seed=config.train.seed)
    members = [(r, w) for r, w in zip(library, chosen.weights, strict=True) if w > 0]
    fit_here = [r for r, _ in members if r.trained is None]  # the frozen head: fit on train as its own run would
    unaffordable = None
    if chosen.kept:
        for row in fit_here:
            row.trained = _train_frozen(row.config, source, splits, log)
            timed = time.perf_counter()
            _valid_probabilities(row.trained.folder / RunFile.BEST, source, splits)
            row.pass_s = time.perf_counter() - timed
        needed = _ensemble_after_seconds([r for r, _ in members], splits, after)
        left = deadline - time.perf_counter()
        if left < needed:
            unaffordable = f"its evaluation and explaining would take about {needed:.0f} s, {max(left, 0):.0f} s left"
    verdict = chosen.verdict([r.candidate for r in library], unaffordable=unaffordable)
    log(verdict)
    if not chosen.kept or unaffordable:
        for row in fit_here:  # a frozen winner is fit by the pipeline, with its decisions recorded
            if row.trained is not None:
                row.trained.discard()
                row.trained = None
        return None, verdict
    trained = max((m for m in members if len(m[0].trained.history) > 1), key=lambda m: m[1], default=members[0])[0]
    probs = ensemble.combine([r.valid_probs for r, _ in members], np.array([w for _, w in members]))
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-ensemble-"))
    combined = ensemble.write_ensemble(
        [(r.trained.folder / RunFile.BEST, w) for r, w in members], folder, trained.config,
        history_from=trained.trained.folder, valid_loss=evidence.log_loss(probs, labels),
    )  # fmt: skip
    label = "ensemble: " + " + ".join(f"{w:.2f} x {r.candidate}" for r, w in members)
    return Row(label, "ensemble", round(float(np.mean(probs.argmax(1) == labels)), 4),
               seconds=time.perf_counter() - started, config=combined,
               trained=Trained(folder, trained.trained.history), valid_probs=probs, valid_score=chosen.score,
               margin=chosen.margin), verdict  # fmt: skip


def _ensemble_after_seconds(members: list[Row], splits, after: AfterWork) -> float:
    """The command's work after training an ensemble of `members`: every member answers every image (a validation
    pass costs the members' passes together), and explaining works at the largest member's side, where it takes
    the fewest images (the smallest count of validation passes among the members' own estimates)."""
    works = [after(r.config, splits, True) for r in members]  # explaining at its least: it takes what is left
    return min(p for p, _ in works) * sum(r.pass_s for r in members) + max(s for _, s in works)


def _train_frozen(config: RunConfig, source: Source, splits, log) -> Trained:
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-candidate-"))
    try:
        _, history = train_model(config, make_fabric(_one_process(config.train)), source, splits, folder,
                                 log=_indented(log))  # fmt: skip
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Trained(folder, history)


def _valid_probabilities(checkpoint: Path, source: Source, splits) -> np.ndarray:
    """The trained candidate's best epoch on the validation images, as probabilities (no test-time flips: every
    candidate is compared as it answers one image)."""
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, checkpoint)
    logits = predict_logits(model, select(source.images, splits["valid"]), ckpt.preprocessing.normalization())
    return torch.softmax(logits.float(), dim=1).numpy()


def _one_process(t: TrainConfig) -> TrainConfig:
    """A candidate trains in the process measuring it (under DDP, rank 0 searches while the others wait)."""
    return replace(t, devices=1, num_nodes=1)


def _pick(rows: list[Row], labels: np.ndarray, positive_index: int | None, *, seed: int = 0) -> Row:
    """Every family's candidate scored on the same validation images by one metric (evidence.py: log loss, or with
    a positive class its AUC); within one paired standard error of the best (TRAINED_LEAD of them where the best is
    a trained candidate and the other cheaper), the first family in frozen, scratch,
    fine-tune order (the chosen frozen row stands for the frozen family)."""
    measured = [r for r in rows if r.valid_probs is not None and r.config is not None]
    for row in measured:
        row.valid_score = evidence.score(row.valid_probs, labels, positive_index)
    if measured:
        top = measured[evidence.best([r.valid_score for r in measured], positive_index)]
        for row in measured:
            row.margin = evidence.tie_margin(top.valid_probs, row.valid_probs, labels, positive_index, seed=seed)
            if FAMILY_ORDER[top.family] > FAMILY_ORDER[row.family]:  # a trained candidate leads a cheaper one
                row.margin *= TRAINED_LEAD
        tied = [r for r in measured if evidence.gain(top.valid_score, r.valid_score, positive_index) <= r.margin]
    else:  # no candidate's answers per image (not expected): the recorded accuracies, ties within TIE
        measured = [r for r in rows if r.valid_accuracy is not None and r.config is not None]
        best = max(r.valid_accuracy for r in measured)
        tied = [r for r in measured if r.valid_accuracy >= best - TIE]
    winner = min(tied, key=lambda r: FAMILY_ORDER[r.family])
    winner.status = "chosen"
    return winner


def _named(config: RunConfig, name: str) -> RunConfig:
    strategy = AUTO if name == BACKBONE else None
    return replace(config, model=replace(config.model, name=name, strategy=strategy))


def _chosen(config: RunConfig, name: str, why: str, log: Callable[[str], None] | None = None) -> RunConfig:
    if log is not None:
        log(f"model: {name} (auto: {why})")
    return with_decisions(_named(config, name), model=why)


def _nothing_after(config: RunConfig, splits, least: bool = False) -> tuple[float, float]:
    return 0.0, 0.0


def _indented(log: Callable[[str], None]) -> Callable[[str], None]:
    return lambda line: log(f"    {line}")
