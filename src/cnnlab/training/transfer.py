"""Transfer learning: a backbone's defaults for a run, the strategy choice, and the features a frozen head trains on.

The course's dataset-size x similarity matrix is the prior:

|                  | similar to ImageNet | different from ImageNet   |
| ---------------- | ------------------- | ------------------------- |
| small dataset    | feature-extract     | truncate (early features) |
| large dataset    | fine-tune           | retrain (from scratch)    |

Size: training images per class, small below SMALL_PER_CLASS. Similarity: ImageNet is colour
photographs, so grey images (X-rays, sketches, Fashion-MNIST) count as different; colour images count
as similar when the pretrained ImageNet classifier labels a sample of them confidently (mean top-1
probability >= SIMILAR_CONFIDENCE). Measured with efficientnet_lite0: scikit-image/scikit-learn photos
0.41, Fashion-MNIST 0.24-0.30, LFW face crops 0.17, scikit-learn digits 0.08.

On small data the prior does not decide: which level of features transfers best is an empirical question
that costs one backbone pass and a few seconds of logistic regression, so `auto` measures the frozen
candidates (final features, earlier levels, their concatenations) on the validation split and takes the
best (validation accuracy; AUC for a binary --positive task). The matrix (dermoscopy: "truncate") chose a
head that scored AUC 0.34; the measured choice is right by construction on validation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from cnnlab.config import RunConfig, with_decisions
from cnnlab.data.augment import policy_for
from cnnlab.data.batches import Normalization
from cnnlab.data.lazy import row_view, select, take
from cnnlab.data.sources import Source
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.metrics import roc_auc
from cnnlab.models import create_model
from cnnlab.models.pretrained import (
    FINAL,
    OFFLINE,
    PretrainedClassifier,
    backbone_decoding,
    backbone_preprocessing,
    is_pretrained_name,
    level_columns,
    load_pretrained,
)
from cnnlab.predict.features import backbone_features
from cnnlab.training.head import fit_linear_head, train_head, write_head_run

SMALL_PER_CLASS = 1000  # training images per class; below this a dataset is "small"
SIMILAR_CONFIDENCE = 0.25  # mean top-1 ImageNet probability; at or above this the images are "similar"
SAMPLE = 64  # training images the similarity is measured on
SCORE_TIE = 0.005  # validation accuracy (or AUC): candidates closer than this to the best tie, at the least; a wider
# margin comes from the scores' own noise (`tie_margin`: one standard error, Breiman's rule)
CV_MIN_VALID, CV_MIN_PER_CLASS = 100, 20  # fewer validation images (in all, per class): candidates are cross-validated
CV_FOLDS = 5
SEARCH_ROWS = 5000  # training images the frozen candidates' heads are fit on when ranking them (all, up to this)
CV_L2_GRID = (1.0, 0.1, 0.01, 1e-3, 1e-4)  # every other strength of the head's grid: the folds rank, not tune

MATRIX = {
    (True, True): "feature-extract",
    (True, False): "truncate",
    (False, True): "fine-tune",
    (False, False): "retrain",
}


@dataclass
class Candidate:
    """One frozen variant scored on validation (or cross-validated, see `cv_folds`): its feature levels and the
    logistic-regression head's result."""

    strategy: str
    levels: tuple[int, ...]
    valid_score: float  # accuracy, or AUC of the positive class; the folds' mean where cross-validated
    valid_loss: float
    l2: float
    valid_acc: float  # on the validation split itself (compared with other model families)
    spread: float | None = None  # the folds' standard deviation where cross-validated
    correct: torch.Tensor | None = field(default=None, repr=False)  # per validation image (accuracy, no CV)
    valid_probs: torch.Tensor | None = field(default=None, repr=False)  # [valid images, classes]: the model search
    image_s: float = 0.0  # seconds per image of the backbone pass that gave the features (0: read from the cache)

    @property
    def label(self) -> str:
        names = ["final" if level == FINAL else f"level {level}" for level in self.levels]
        return f"{self.strategy} ({' + '.join(names)})"


@dataclass
class StrategyChoice:
    strategy: str
    reason: str
    prior: str  # what the size x similarity matrix says
    levels: tuple[int, ...] | None = None  # the frozen levels chosen by measurement (None: the model's default)
    candidates: list[Candidate] = field(default_factory=list)
    score_name: str = "accuracy"
    folds: int = 0  # k of the k-fold cross-validation that scored the candidates; 0: the validation split

    def table(self) -> list[dict]:
        """The candidates as rows for config.yaml and the report."""
        rows = []
        for c in self.candidates:
            score = f"cv{self.folds}_{self.score_name}" if self.folds else f"valid_{self.score_name}"
            row = {"candidate": c.label, score: round(c.valid_score, 4), "valid_acc": round(c.valid_acc, 4),
                   "valid_loss": round(c.valid_loss, 4), "l2": c.l2}  # fmt: skip
            row["chosen"] = c.label == _chosen_label(self)
            if c.spread is not None:
                row["cv_spread"] = round(c.spread, 4)
            rows.append(row)
        return rows


# ---- defaults for a run ------------------------------------------------------------------------------


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
        data = backbone_decoding(data, name)
    return replace(config, data=data, model=replace(m, strategy=m.strategy or "auto", options=options))


def training_normalization(config: RunConfig, images, train_idx) -> Normalization:
    """A pretrained backbone's own mean/std (3 channels: grey images broadcast to RGB); else the train split's
    (`images[train_idx]`, selected only then: a copy of 20,000 photos' train split is 1.8 GB)."""
    if is_pretrained_name(config.model.name):
        prep = backbone_preprocessing(config.model.name)
        return Normalization(prep.mean, prep.std)
    return Normalization.from_images(select(images, train_idx))


# ---- the strategy ------------------------------------------------------------------------------------


def resolve_strategy(
    config: RunConfig,
    source: Source,
    splits,
    *,
    positive: str | None,
    measure: bool,
    log: Callable[[str], None],
    measure_large: bool = False,
) -> RunConfig:
    """Turn strategy=auto into a concrete strategy (and frozen levels), say why, and record it in the config.
    `measure_large`: measure the frozen candidates on large data too (the model search compares them with trained
    candidates; alone, the size x similarity matrix decides large data)."""
    return resolve_strategy_choice(config, source, splits, positive=positive, measure=measure, log=log,
                                   measure_large=measure_large)[0]  # fmt: skip


def resolve_strategy_choice(
    config: RunConfig, source: Source, splits, *, positive: str | None, measure: bool, log: Callable[[str], None],
    measure_large: bool = False, deadline: float | None = None,
) -> tuple[RunConfig, Candidate | None]:  # fmt: skip
    """`resolve_strategy`, and the measured frozen candidate it chose (with its validation probabilities: the model
    search compares it with the trained candidates on the same images), None when nothing was measured. The
    candidates' heads share what is left until `deadline` (see `measure_frozen_candidates`)."""
    if config.model.strategy != "auto":
        if is_pretrained_name(config.model.name):
            why = f"auto: {config.model.strategy_reason}" if config.model.strategy_reason else "chosen by you"
            log(f"strategy: {config.model.strategy} ({why})")
        return config, None
    choice = choose_strategy(
        config, source, splits, positive=positive, measure=measure,
        cache_dir=Path(config.data.root) / "cache" if measure else None, log=log, measure_large=measure_large,
        deadline=deadline,
    )  # fmt: skip
    log(f"strategy: {choice.strategy} (auto: {choice.reason})")
    for row in choice.table():
        chosen = row.pop("chosen")
        values = "  ".join(f"{k} {v:g}" if isinstance(v, float) else str(v) for k, v in row.items())
        log(f"  {values}" + ("  <- chosen" if chosen else ""))
    options = dict(config.model.options)
    if choice.levels is not None:
        options["levels"] = list(choice.levels)
    model = replace(
        config.model, strategy=choice.strategy, strategy_reason=choice.reason, options=options,
        strategy_candidates=choice.table() or None,
    )  # fmt: skip
    chosen = [c for c in choice.candidates if c.label == _chosen_label(choice)]
    return replace(config, model=model), (chosen[0] if chosen else None)


def _chosen_label(choice: StrategyChoice) -> str | None:
    chosen = [c for c in choice.candidates if c.levels == choice.levels and c.strategy == choice.strategy]
    return chosen[0].label if chosen else None


def choose_strategy(
    config: RunConfig, source: Source, splits, *, positive: str | None = None, measure: bool = True,
    cache_dir: Path | None = None, log: Callable[[str], None] = print, measure_large: bool = False,
    deadline: float | None = None,
) -> StrategyChoice:  # fmt: skip
    """The matrix's prior; on small data (or any, with `measure_large`), the frozen candidates measured on validation
    decide."""
    name, weights, seed = config.model.name, config.model.weights, config.train.seed
    train_idx = torch.as_tensor(splits["train"])
    train_labels = source.labels[train_idx]
    norm = training_normalization(config, source.images, train_idx)
    n_classes = len(source.class_names)
    per_class = len(train_labels) / max(n_classes, 1)
    small = per_class < SMALL_PER_CLASS
    grey = source.channels == 1
    sample = take(source.images, train_idx[_sample(train_labels, seed)])
    confidence = imagenet_confidence(name, sample, norm, weights=weights)
    similar = not grey and (confidence is None or confidence >= SIMILAR_CONFIDENCE)
    prior = MATRIX[(small, similar)]
    size = f"{'small' if small else 'large'} ({per_class:.0f} images/class, threshold {SMALL_PER_CLASS})"
    if grey:
        sim = "different (grey images; ImageNet is colour photographs)"
    elif confidence is None:
        sim = "similarity unknown (the weights have no ImageNet head), assumed similar"
    else:
        sim = (
            f"{'similar' if similar else 'different'} (ImageNet top-1 confidence {confidence:.2f} on "
            f"{min(SAMPLE, len(train_labels))} images, threshold {SIMILAR_CONFIDENCE})"
        )
    prior_text = f"{size}, {sim}: the size x similarity matrix says {prior}"
    if (not small and not measure_large) or not measure or len(splits["valid"]) == 0:
        why = "large data: measuring needs full training runs" if not small else "not measured (dry run)"
        return StrategyChoice(prior, f"{prior_text} ({why})", prior)
    positive_index = source.class_names.index(positive) if positive is not None else None
    folds = CV_FOLDS if small_validation(source.labels[torch.as_tensor(splits["valid"])], n_classes) else 0
    candidates = measure_frozen_candidates(
        config,
        source,
        splits,
        norm,
        positive_index=positive_index,
        cache_dir=cache_dir,
        folds=folds,
        log=log,
        deadline=deadline,
    )
    top = max(candidates, key=lambda c: c.valid_score)
    # validation scores this close cannot tell the candidates apart: the simpler (fewer feature levels), more
    # regularised one is taken (49 validation photos all at 100% had picked the weakest L2 by loss)
    tied = [c for c in candidates if c.valid_score >= top.valid_score - tie_margin(top, c, folds)]
    best = min(tied, key=lambda c: (len(c.levels), -c.l2))
    score_name = "auc" if positive_index is not None else "accuracy"
    how = f"{folds}-fold cross-validated {score_name} over train + valid (the validation split is small)" if folds \
        else f"validation {score_name}"  # fmt: skip
    reason = (
        f"{prior_text}; measured by {how}: {best.label} ({best.valid_score:.4f}; the best of {len(candidates)} "
        f"frozen candidates {top.valid_score:.4f}, {top.label}; ties within one standard error, at least "
        f"{SCORE_TIE}, go to fewer levels, then more L2)"
    )
    return StrategyChoice(best.strategy, reason, prior, best.levels, candidates, score_name, folds)


def tie_margin(top: Candidate, other: Candidate, folds: int) -> float:
    """How far below the top score `other` still ties with it: one standard error of the comparison (the
    one-standard-error rule of Breiman et al. and Hastie et al., ESL 7.10), at least SCORE_TIE. On one validation
    split the two are scored on the same images, so the error is the paired one: the standard deviation of the
    per-image differences over sqrt(n) (Fashion-MNIST at 100 per class: a 2-image lead on 200 images was noise,
    1.5-2 points of it); cross-validated, the top candidate's fold spread over sqrt(k)."""
    if folds and top.spread is not None:
        return max(SCORE_TIE, top.spread / np.sqrt(folds))
    if top.correct is None or other.correct is None or len(top.correct) < 2:
        return SCORE_TIE  # AUC: no per-image score to pair
    differences = top.correct.double() - other.correct.double()
    return max(SCORE_TIE, float(differences.std() / np.sqrt(len(differences))))


def small_validation(valid_labels: torch.Tensor, n_classes: int) -> bool:
    """Too few validation images to rank candidates on: one image is more than a point, or a class has few."""
    return len(valid_labels) < CV_MIN_VALID or len(valid_labels) / max(n_classes, 1) < CV_MIN_PER_CLASS


def candidate_levels(n_levels: int) -> list[tuple[int, ...]]:
    """Final features, the two levels below them, final + second-to-last, and every level together."""
    last = n_levels - 2  # timm feature_info's second-to-last level: the deepest one below the final features
    sets = [(FINAL,), (last,), (last - 1,), (last, FINAL), (*range(last + 1), FINAL)]
    return [s for s in sets if all(level == FINAL or level >= 0 for level in s)]


def measure_frozen_candidates(
    config: RunConfig, source: Source, splits, norm: Normalization, *, positive_index: int | None,
    cache_dir: Path | None, folds: int = 0, log: Callable[[str], None], deadline: float | None = None,
) -> list[Candidate]:  # fmt: skip
    """Score every frozen variant from one cached backbone pass (the same cache the head reads): on the validation
    split, or with `folds` by stratified k-fold cross-validation over train + valid (heads cost milliseconds on
    small data; on large data each head's L2 path gets an equal share of what is left until `deadline`)."""
    model = _frozen_model(config, source)
    started = time.perf_counter()
    train_all, valid_all = _all_level_features(
        model, config, source, splits, norm, views=0, cache_dir=cache_dir, log=log
    )
    image_s = (time.perf_counter() - started) / max(len(splits["train"]) + len(splits["valid"]), 1)
    y_train, y_valid = (source.labels[torch.as_tensor(splits[s])] for s in ("train", "valid"))
    n_classes = len(source.class_names)
    rows = _search_rows(y_train, config.train.seed)
    if rows is not None:
        log(f"frozen candidates: each head fit on {len(rows):,} of the {len(y_train):,} training images (a stratified "
            "sample: the candidates are ranked, the chosen one is then fit on all of them)")  # fmt: skip
        y_train = y_train[rows]
    out = []
    sets = candidate_levels(len(model.backbone.feature_info))
    for n, levels in enumerate(sets):
        strategy = "feature-extract" if FINAL in levels else "truncate"
        share = None if deadline is None else time.perf_counter() + (deadline - time.perf_counter()) / (len(sets) - n)
        columns = level_columns(model.level_widths(), model.all_levels(), levels)
        x_train, x_valid = train_all[0][:, columns], valid_all[0][:, columns]
        x_train = x_train if rows is None else x_train[rows]
        head = fit_linear_head(x_train, y_train, x_valid, y_valid, n_classes, deadline=share)
        logits = head.logits(x_valid)
        correct = logits.argmax(1) == y_valid if positive_index is None else None  # tie_margin pairs them
        score = float(correct.double().mean()) if correct is not None else _head_score(head, x_valid, y_valid,
                                                                                        positive_index)  # fmt: skip
        spread = None
        if folds:
            scores = _cross_validated(torch.cat([x_train, x_valid]), torch.cat([y_train, y_valid]), n_classes,
                                      positive_index, folds, config.train.seed)  # fmt: skip
            score, spread = float(np.mean(scores)), float(np.std(scores))
        out.append(Candidate(strategy, levels, float(score), head.valid_loss, head.l2, head.valid_acc, spread, correct,
                             torch.softmax(logits.float(), dim=1), image_s))  # fmt: skip
    return out


def _search_rows(labels: torch.Tensor, seed: int) -> torch.Tensor | None:
    """A stratified, seeded sample of SEARCH_ROWS training rows for ranking the frozen candidates, or None (all of
    them) on smaller splits: the heads' cost grows with the rows, their ranking hardly (10,000 photos: 5 candidates'
    heads took minutes of a 5-minute budget)."""
    if len(labels) <= SEARCH_ROWS:
        return None
    rng, share = np.random.default_rng(seed), SEARCH_ROWS / len(labels)
    keep = [rng.permutation(np.flatnonzero(labels.numpy() == c))[: max(1, round(share * int((labels == c).sum())))]
            for c in np.unique(labels.numpy())]  # fmt: skip
    return torch.as_tensor(np.sort(np.concatenate(keep)))


def _head_score(head, x: torch.Tensor, y: torch.Tensor, positive_index: int | None) -> float:
    """Accuracy, or the positive class's AUC."""
    if positive_index is None:
        return float((head.logits(x).argmax(1) == y).double().mean())
    probs = torch.softmax(head.logits(x), dim=1)[:, positive_index]
    return float(roc_auc((y == positive_index).numpy(), probs.numpy()))


def _cross_validated(x: torch.Tensor, y: torch.Tensor, n_classes: int, positive_index: int | None, folds: int,
                     seed: int) -> list[float]:  # fmt: skip
    """One score per fold of a stratified k-fold split (scikit-learn's), each head's L2 chosen on its fold."""
    k = max(2, min(folds, int(torch.bincount(y).min())))  # a class with 3 images allows 3 folds at most
    split = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y.numpy())
    scores = []
    for fit_idx, held_idx in split:
        fit_idx, held_idx = torch.as_tensor(fit_idx), torch.as_tensor(held_idx)
        head = fit_linear_head(x[fit_idx], y[fit_idx], x[held_idx], y[held_idx], n_classes, l2_grid=CV_L2_GRID)
        scores.append(_head_score(head, x[held_idx], y[held_idx], positive_index))
    return scores


def _frozen_model(config: RunConfig, source: Source) -> PretrainedClassifier:
    """The pretrained backbone as the run will use it (input size, weights), to compute all-level features."""
    options = {k: v for k, v in config.model.options.items() if k not in ("levels", "cut")}
    model = create_model(
        config.model.name, num_classes=len(source.class_names), in_channels=source.channels,
        image_size=source.image_size, options=options, strategy="feature-extract",
    )  # fmt: skip
    load_pretrained(model, config.model.weights)
    return model


def _sample(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Positions of up to SAMPLE images, spread over the classes (round-robin over a seeded shuffle of each)."""
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels.numpy() == c)) for c in np.unique(labels.numpy())]
    picked: list[int] = []
    for i in range(max(len(ix) for ix in by_class)):
        picked += [int(ix[i]) for ix in by_class if i < len(ix)]
        if len(picked) >= SAMPLE:
            break
    return torch.as_tensor(picked[:SAMPLE], dtype=torch.long)


@torch.inference_mode()
def imagenet_confidence(backbone: str, images: torch.Tensor, norm: Normalization, *, weights=None) -> float | None:
    """Mean top-1 softmax probability of the pretrained 1000-class model on `images`."""
    model = PretrainedClassifier(1000, 3, images.shape[-1], backbone=backbone, strategy="feature-extract")
    if not load_pretrained(model, weights, with_head=True):
        return None  # a weights file without the ImageNet classifier
    model.eval()
    with torch.inference_mode():  # in passes of 16: 64 photos at once with autograd on held about 0.7 GB
        probs = torch.cat([
            torch.softmax(model(norm.apply(images[i : i + 16]).contiguous(memory_format=torch.channels_last)), dim=1)
            for i in range(0, len(images), 16)
        ])  # fmt: skip
    return float(probs.max(dim=1).values.mean())


# ---- features for a frozen head ----------------------------------------------------------------------


def _all_level_features(model, config: RunConfig, source: Source, splits, norm, *, views: int, cache_dir, log,
                        limit: int | None = None, shared: bool = False):  # fmt: skip
    """All-level features of the train split ([1 + views, N, D_all]) and the valid split ([1, N, D_all]); `shared`:
    every DDP process computes its share (predict/features.py)."""
    flips = config.data.flips if config.data.flips is not None else bool(source.flip_invariant)  # unknown: off
    policy = policy_for(config.data.augment if views else "none", flip_invariant=flips)
    out = []
    for split, n_views in (("train", views), ("valid", 0)):
        idx = splits[split] if limit is None else splits[split][:limit]
        out.append(backbone_features(
            model, row_view(source.images, idx), norm, cache_dir=cache_dir, views=n_views, policy=policy,
            seed=config.train.seed, log=log, shared=shared,
        ))  # fmt: skip
    return out


def head_features(model, config: RunConfig, source: Source, splits, norm, *, dry_run: bool, log, shared: bool = False):
    """(train features [1 + views, N, D], train labels, valid features [N, D], valid labels) for `model`'s
    levels, from the shared all-level cache (in a dry run: one batch, nothing cached). `shared`: every DDP process
    calls it together (training across processes), each computes its share of the images and the shares are
    gathered; the model search trains its candidates in rank 0 alone, without it."""
    limit = config.train.batch_size if dry_run else None
    cache_dir = None if dry_run else Path(config.data.root) / "cache"
    train_all, valid_all = _all_level_features(
        model, config, source, splits, norm, views=config.model.feature_views, cache_dir=cache_dir, log=log,
        limit=limit, shared=shared,
    )  # fmt: skip
    y_train, y_valid = (source.labels[torch.as_tensor(splits[s][: f.shape[1]])] for s, f in
                        (("train", train_all), ("valid", valid_all)))  # fmt: skip
    return model.select_levels(train_all), y_train, model.select_levels(valid_all[0]), y_valid


def fit_frozen_head(model, config: RunConfig, source: Source, splits, norm, run_dir: Path, template, *, writer: bool,
                    dry_run: bool, log, deadline: float | None = None, shared: bool = False):  # fmt: skip
    """A frozen strategy's whole training: features from the shared cache, the head fit to convergence (its L2 path
    stopped at `deadline`, a budget's share), the checkpoints written as `fit` would (best.pt = last.pt, one metrics
    row). Returns the one EpochStats and the config with the head's regularisation under `decisions:` (the caller
    records it)."""
    features = head_features(model, config, source, splits, norm, dry_run=dry_run, log=log, shared=shared)
    log(f"model: {config.model.name}, {config.model.strategy}, {model.num_features} features per image")
    stats, head = train_head(model, *features, log=log, deadline=deadline, l2_from=measured_l2(config))
    config = with_decisions(config, head=head.describe())
    template.config = config.to_dict()
    if writer:
        write_head_run(model, stats, head, run_dir, meta=template)
    return stats, config


def measured_l2(config: RunConfig) -> float | None:
    """The L2 strength the measured frozen candidate chose (config.model.strategy_candidates: the frozen table, or
    the model search's), None when none was measured."""
    for row in config.model.strategy_candidates or []:
        if (row.get("chosen") is True or row.get("status") == "chosen") and row.get("l2") is not None:
            return float(row["l2"])
    return None


def warm_start_head(model, config: RunConfig, source: Source, splits, norm, *, dry_run: bool, log,
                    shared: bool = False) -> None:  # fmt: skip
    """Fine-tuning's first stage: the head fit to convergence on the frozen backbone's (cached) final features,
    so the backbone's first steps follow a trained head's gradients, not a random head's (fastai's `fine_tune`
    trains the head first; "linear probe, then fine-tune", Kumar et al. 2022)."""
    features = head_features(model, config, source, splits, norm, dry_run=dry_run, log=log, shared=shared)
    log("fine-tune: the head first, on the frozen features")
    train_head(model, *features, log=log)
