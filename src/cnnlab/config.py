"""Typed run configuration: dataclasses validated on construction, saved as YAML in every run.

The CLI turns flags into these objects; nothing else reads flags. Units are in trailing comments.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from cnnlab.errors import CnnlabError, did_you_mean, unknown_choice
from cnnlab.files import write_text_atomic

Augment = Literal["none", "light", "erase", "standard"]
Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["none", "step", "cosine", "onecycle"]
Precision = Literal["auto", "32-true", "bf16-mixed"]
Logger = Literal["csv", "tensorboard"]  # metrics.csv is always written; tensorboard adds RUN/tensorboard/
Device = Literal["auto", "cpu", "cuda"]

DEFAULT_MODEL = "simple_cnn_bn"

# ---- decision-threshold rules (see evaluate/thresholds.py for what each means) ------------------------

DEFAULT_RULE = "sensitivity:0.95"  # miss few cases: the conservative medical choice
RULES = ("sensitivity:X", "specificity:X", "youden", "max-f1", "cost:R", "fixed:T")


@dataclass(frozen=True)
class ThresholdRule:
    kind: str  # sensitivity | specificity | youden | max-f1 | cost | fixed
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_rule(text: str) -> ThresholdRule:
    """Parse `sensitivity:0.95`, `youden`, `cost:5`, ... with an error that lists the valid forms."""
    kind, _, raw = text.strip().partition(":")
    if kind in ("youden", "max-f1") and not raw:
        return ThresholdRule(kind)
    if kind in ("sensitivity", "specificity", "cost", "fixed") and raw:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        bounded = kind != "cost"
        if not math.isfinite(value) or (bounded and not 0 <= value <= 1) or (not bounded and value <= 0):
            limits = "a number in [0, 1]" if bounded else "a positive number (FN cost / FP cost)"
            raise CnnlabError(f"threshold rule '{text}': the value must be {limits}")
        return ThresholdRule(kind, value)
    raise CnnlabError(f"unknown threshold rule '{text}' (valid: {', '.join(RULES)}; e.g. sensitivity:0.95)")


def _check_choice(what: str, value: str, literal: Any) -> None:
    if value not in get_args(literal):
        raise unknown_choice(what, value, get_args(literal))


def _check_fraction(what: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise CnnlabError(f"{what} must be between 0 and 1 (exclusive), got {value} (e.g. {what}=0.2)")


@dataclass
class DataConfig:
    source: str = "fashion-mnist"  # digits | fashion-mnist | mnist | cifar10 | folder:PATH
    root: str = "data"  # where downloads and caches live
    valid_fraction: float = 0.2  # of the training pool, stratified
    test_fraction: float = 0.2  # of the pool, only for sources without their own test set
    image_size: int | None = None  # pixels, square; None = from the data (folders: their common size, see sources)
    crop_pct: float = 1.0  # folders: resize the shorter side to image_size / crop_pct, centre-crop image_size
    augment: Augment = "light"
    flips: bool | None = None  # horizontal flips in augmentation; None = from the data (folders: measured)
    train_limit: int | None = None  # images; a stratified subset of the train split, for quick runs
    sample: float | None = None  # folders: the share of files used (by a hash of each path; data/identity.py
    # `sampled`); set by the budget on a folder too large for it (training/scale.py)
    strict: bool = False  # fail on an unreadable image instead of skipping it
    stream: bool | None = None  # folders: read batches from the decoded cache on disk; None: by size (data/memory.py)
    audit: Literal["auto", "on", "off"] = "auto"  # duplicates/leakage before training; auto: up to 30,000 images
    dedupe: bool = False  # drop valid/test images that duplicate a training image (the folder is not touched)
    drop_degenerate: bool = False  # drop blank, striped, flat and blurred images from every split (audit/degenerate.py)
    group_by: str | None = None  # folders: a regex whose first group (or match) in each relative path is its group
    groups: str | None = None  # folders: a CSV of file,group rows; no group is split across train/valid/test

    def __post_init__(self) -> None:
        _check_fraction("valid_fraction", self.valid_fraction)
        _check_fraction("test_fraction", self.test_fraction)
        _check_choice("augment preset", self.augment, Augment)
        _check_choice("audit", self.audit, Literal["auto", "on", "off"])
        if self.image_size is not None and self.image_size < 8:
            raise CnnlabError(f"image_size must be >= 8 pixels, got {self.image_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise CnnlabError(f"crop_pct must be in (0, 1], got {self.crop_pct} (0.875 = resize 256, crop 224)")
        if self.sample is not None and not 0.0 < self.sample <= 1.0:
            raise CnnlabError(f"sample must be a share of the folder's files in (0, 1], got {self.sample}")
        if self.train_limit is not None and self.train_limit < 1:
            raise CnnlabError(f"train_limit must be >= 1 image, got {self.train_limit}")
        if self.group_by is not None and self.groups is not None:
            raise CnnlabError("give group_by (--group-by REGEX) or groups (--groups FILE.csv), not both")


Strategy = Literal["auto", "feature-extract", "truncate", "fine-tune", "retrain"]


@dataclass
class ModelConfig:
    name: str = "auto"  # auto: a folder's model is chosen by measurement (training/auto.py); datasets: DEFAULT_MODEL
    options: dict[str, Any] = field(default_factory=dict)  # the model's own keyword options, e.g. cnn widths
    strategy: str | None = None  # pretrained backbones only: auto | feature-extract | truncate | fine-tune | retrain
    weights: str | None = None  # pretrained backbones only: a local state_dict file instead of the default source
    feature_views: int = 0  # frozen strategies: augmented views cached per training image besides the plain one
    strategy_reason: str | None = None  # written by strategy=auto: why it chose what it chose
    strategy_candidates: list[dict[str, Any]] | None = None  # written by strategy=auto: validation scores

    def __post_init__(self) -> None:
        if self.strategy is not None:
            _check_choice("strategy", self.strategy, Strategy)
        if self.feature_views < 0:
            raise CnnlabError(f"feature_views must be >= 0, got {self.feature_views}")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int | None = None  # images per step; None = 128, smaller when the train split is small
    optimizer: Optimizer = "adamw"
    lr: float = 3e-3  # peak learning rate for onecycle
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = 5e-4
    schedule: Schedule = "onecycle"
    step_size: int = 5  # epochs between decays, schedule=step
    gamma: float = 0.1  # decay factor, schedule=step
    label_smoothing: float = 0.0
    progressive: bool | None = None  # training/progressive.py; None: off, on in the larger recipe
    backbone_lr: float = 0.1  # fine-tune: the pretrained backbone's learning rate as a fraction of lr
    patience: int | None = None  # epochs without valid-loss improvement before stopping
    budget_minutes: float | None = None  # plan the epochs (and so the schedule) to finish training in this time
    precision: Precision = "auto"
    logger: Logger = "csv"
    compile: bool = False  # torch.compile the training step's model (pays off on GPUs; on CPU measured ~1x)
    device: Device = "auto"
    devices: int = 1  # processes per node; > 1 trains data-parallel (DDP through Lightning Fabric)
    num_nodes: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise CnnlabError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise CnnlabError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise CnnlabError(f"lr must be > 0, got {self.lr} (e.g. --lr 0.003)")
        if self.weight_decay < 0:
            raise CnnlabError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise CnnlabError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.backbone_lr <= 1.0:
            raise CnnlabError(f"backbone_lr must be in (0, 1], got {self.backbone_lr} (a fraction of --lr, e.g. 0.1)")
        if self.devices < 1 or self.num_nodes < 1:
            raise CnnlabError(f"devices and num_nodes must be >= 1, got {self.devices} and {self.num_nodes}")
        if self.batch_size is not None and self.batch_size % (self.devices * self.num_nodes):
            raise CnnlabError(
                f"batch_size {self.batch_size} must divide evenly over {self.devices * self.num_nodes} processes "
                "(it is the global batch; each process takes an equal share)"
            )
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise CnnlabError(f"budget_minutes must be > 0, got {self.budget_minutes} (e.g. --budget-minutes 5)")
        if self.patience is not None and self.patience < 1:
            raise CnnlabError(f"patience must be >= 1 epoch, got {self.patience}")
        _check_choice("optimizer", self.optimizer, Optimizer)
        _check_choice("schedule", self.schedule, Schedule)
        _check_choice("precision", self.precision, Precision)
        _check_choice("logger", self.logger, Logger)
        _check_choice("device", self.device, Device)


@dataclass
class EvaluationConfig:
    positive: str | None = None  # also score this class vs the rest (ROC/AUC, a threshold chosen on validation)
    threshold_rule: str = DEFAULT_RULE  # how that threshold is chosen: sensitivity:X, specificity:X, youden, ...
    tta: bool | None = None  # average with the mirrored image at test time; None = decided on validation loss

    def __post_init__(self) -> None:
        self.threshold_rule = str(parse_rule(self.threshold_rule))  # an invalid rule fails here, once

    @property
    def rule(self) -> ThresholdRule:
        return parse_rule(self.threshold_rule)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    decisions: dict[str, str] = field(default_factory=dict)  # what was decided from the data, and why

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Build from nested dicts (YAML), rejecting unknown keys with the closest valid one."""
        raw = raw or {}
        _reject_unknown("config section", raw, [f.name for f in dataclasses.fields(cls)])
        decisions = raw.get("decisions") or {}
        if not isinstance(decisions, dict):
            raise CnnlabError(f"config section 'decisions' must be a mapping of name: reason, got {decisions!r}")
        parts: dict[str, Any] = {"decisions": {str(k): str(v) for k, v in decisions.items()}}
        for f in dataclasses.fields(cls):
            if f.name == "decisions":
                continue
            sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "evaluation": EvaluationConfig}
            section_cls = sections[f.name]
            section = raw.get(f.name) or {}
            if not isinstance(section, dict):
                raise CnnlabError(f"config section '{f.name}' must be a mapping, got {section!r}")
            _reject_unknown(f"'{f.name}' option", section, [g.name for g in dataclasses.fields(section_cls)])
            _check_types(f.name, section_cls, section)
            parts[f.name] = section_cls(**section)
        return cls(**parts)


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", tuple: "a list", list: "a list"}


def _check_types(section: str, section_cls, raw: dict[str, Any]) -> None:
    """A value of the wrong kind (text where a number belongs) is one clear line, judged by the option's
    default; options whose default is None take what their own validation accepts."""
    for f in dataclasses.fields(section_cls):
        if f.name not in raw or raw[f.name] is None or f.default in (dataclasses.MISSING, None):
            continue
        value, kind = raw[f.name], type(f.default)
        fits = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
        }.get(kind, isinstance(value, (list, tuple)) if kind in (list, tuple) else isinstance(value, kind))
        if not fits:
            raise CnnlabError(
                f"config option {section}.{f.name} must be {_KINDS.get(kind, kind.__name__)} "
                f"(default {f.default!r}), got {value!r}"
            )


def _reject_unknown(what: str, raw: dict[str, Any], valid: list[str]) -> None:
    for key in raw:
        if key not in valid:
            hint = did_you_mean(str(key), valid, cutoff=0.6)
            raise CnnlabError(f"unknown {what} '{key}' ({hint}valid: {', '.join(valid)})")


def with_overrides(config: RunConfig, section: str, **values: Any) -> RunConfig:
    """A copy of `config` with the non-None `values` replaced in `section` (validated again)."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return config
    part = dataclasses.replace(getattr(config, section), **values)
    return dataclasses.replace(config, **{section: part})


def with_decisions(config: RunConfig, **reasons: str) -> RunConfig:
    """A copy of `config` that records what was decided from the data, and why (`decisions:` in config.yaml)."""
    return dataclasses.replace(config, decisions={**config.decisions, **reasons})


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML config file; a missing or malformed file is a user error."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"config file not found: {path} (pass an existing YAML file to --config)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CnnlabError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise CnnlabError(f"config file {path} must hold a mapping with data/model/train sections")
    try:
        return RunConfig.from_dict(raw or {})
    except TypeError as exc:  # e.g. a list where a number belongs
        raise CnnlabError(f"config file {path}: {exc}") from exc


def save_config(config: RunConfig, path: str | Path) -> None:
    """Written atomically: a run killed mid-write keeps its previous config.yaml whole."""
    write_text_atomic(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


FLAG_NAMES = {"data": "source", "data_root": "root", "model": "name", "model_option": "options"}


def config_from_flags(path: str | Path | None, flags: dict[str, Any]) -> RunConfig:
    """The YAML file at `path` (or the defaults) with the command line's flags over it (None: not given). A flag
    names its option (`--lr` -> train.lr; FLAG_NAMES renames the few that differ); each option lives in exactly
    one section. Model options arrive as KEY=VALUE texts (YAML values)."""
    config = load_config(path) if path else RunConfig()
    owner = {
        f.name: s for s in ("data", "model", "train", "evaluation") for f in dataclasses.fields(getattr(config, s))
    }
    sections: dict[str, dict[str, Any]] = {}
    for flag, value in flags.items():
        option = FLAG_NAMES.get(flag, flag)
        if option not in owner:
            raise CnnlabError(f"flag '{flag}' is not a config option (valid: {', '.join(sorted(owner))})")
        if option == "options" and value and not isinstance(value, dict):  # the API gives a dict already
            value = parse_options(value)
        sections.setdefault(owner[option], {})[option] = value
    for section, values in sections.items():
        config = with_overrides(config, section, **values)
    return config


def parse_options(items: list[str]) -> dict[str, Any]:
    """`["widths=[32,64]", "dropout=0.1"]` -> {"widths": [32, 64], "dropout": 0.1}."""
    options = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CnnlabError(f"--model-option '{item}' is not KEY=VALUE (e.g. --model-option dropout=0.1)")
        try:
            options[key] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise CnnlabError(f"--model-option {key}: cannot read value '{raw}' ({exc.__class__.__name__})") from exc
    return options
