"""`--model auto`, the default for `folder:` sources: which model family a folder gets, by measurement where the
answer is not already known.

- Photos (median shorter side >= PHOTO_SIDE): the offline ImageNet backbone, whose frozen candidates
  (`transfer.measure_frozen_candidates`) are then measured on validation. A from-scratch CNN is not a
  candidate there: on photo folders of a few hundred images it scored 62.5% where the frozen head scored 85%
  (bench/RESULTS.md).
- Many small images (>= LARGE_PER_CLASS per class): the from-scratch CNN at the native size (Fashion-MNIST, 6,000
  per class: 93.8% in 5 minutes; a frozen backbone head about 85%).
- Few small images: both are measured on the validation split. The from-scratch CNN is trained with its default
  recipe, and the backbone's frozen candidates are scored from one cached feature pass (the model resizes the
  images to its input size). The better validation accuracy wins; a tie within TIE goes to the from-scratch
  model, which is smaller and faster. On Fashion-MNIST at 100 images per class the frozen features won by 5
  points; on 8-px digits the CNN did.

Named datasets (`fashion-mnist`, ...) keep the course's default CNN.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cnnlab.config import DEFAULT_MODEL, RunConfig, with_decisions
from cnnlab.data.batches import default_batch_size
from cnnlab.data.sources import Source, scan_folder
from cnnlab.train.fit import make_fabric
from cnnlab.train.runner import train_model
from cnnlab.train.transfer import resolve_strategy

AUTO = "auto"
BACKBONE = "efficientnet_lite0"  # the offline ImageNet backbone (its weights ship with pip)
PHOTO_SIDE = 96  # px, median shorter side: at or above it a folder holds photos
LARGE_PER_CLASS = 1000  # images per class: at or above it a from-scratch CNN has enough to learn from
TIE = 0.005  # validation accuracy: closer than this is a tie


def model_before_data(config: RunConfig, log: Callable[[str], None]) -> RunConfig:
    """`auto` resolved where the folder's listing and headers decide (they also set the size images decode at);
    left `auto` for `measure_small_images` when only a measurement can."""
    if config.model.name != AUTO:
        return config
    if not config.data.source.startswith("folder:"):
        return _chosen(config, DEFAULT_MODEL, "a named dataset: the course's default CNN")
    scan = scan_folder(config.data)
    if scan.median_side >= PHOTO_SIDE:
        why = (f"photos (median shorter side {scan.median_side} px): the ImageNet backbone, its frozen candidates "
               "measured on validation (a from-scratch CNN scored 62.5% vs 85% on such folders)")  # fmt: skip
        return _chosen(config, BACKBONE, why, log=log)
    if scan.images_per_class >= LARGE_PER_CLASS:
        why = (f"{scan.images_per_class:.0f} small images per class (median side {scan.median_side} px): the "
               "from-scratch CNN at their own size")  # fmt: skip
        return _chosen(config, DEFAULT_MODEL, why, log=log)
    return config


def measure_small_images(
    config: RunConfig, source: Source, splits, *, measure: bool, log: Callable[[str], None]
) -> RunConfig:  # fmt: skip
    """A folder of few small images: the from-scratch CNN and the backbone's frozen candidates, each measured on
    the validation split; the better one is returned (with the candidates under `model.strategy_candidates`)."""
    if config.model.name != AUTO:
        return config
    scratch = replace(config, model=replace(config.model, name=DEFAULT_MODEL))
    if not measure or len(splits["valid"]) == 0:
        return _chosen(scratch, DEFAULT_MODEL, "few small images, not measured (dry run): the from-scratch CNN", log)
    log(f"model: auto, measuring the from-scratch CNN and {BACKBONE}'s frozen features on validation")
    started = time.perf_counter()
    batch = scratch.train.batch_size or default_batch_size(len(splits["train"]))[0]
    probe = replace(scratch, train=replace(scratch.train, precision="32-true", budget_minutes=None, batch_size=batch))
    with tempfile.TemporaryDirectory() as tmp:
        _, history = train_model(probe, make_fabric(probe.train), source, splits, Path(tmp), log=_silent)
    best = min(history, key=lambda s: s.valid_loss)
    scratch_s = time.perf_counter() - started
    started = time.perf_counter()
    frozen = replace(config, model=replace(config.model, name=BACKBONE, strategy=AUTO))
    frozen = replace(frozen, evaluation=replace(frozen.evaluation, positive=None))  # chosen by accuracy here
    frozen = resolve_strategy(frozen, source, splits, positive=None, measure=True, log=_silent)
    frozen_acc = max(row["valid_accuracy"] for row in frozen.model.strategy_candidates or [])
    frozen_s = time.perf_counter() - started
    rows = [
        {"candidate": f"{DEFAULT_MODEL} (from scratch, {len(history)} epochs)",
         "valid_accuracy": round(best.valid_acc, 4), "seconds": round(scratch_s, 1)},
        {"candidate": f"{BACKBONE} frozen (best of {len(frozen.model.strategy_candidates or [])})",
         "valid_accuracy": round(frozen_acc, 4), "seconds": round(frozen_s, 1)},
    ]  # fmt: skip
    use_frozen = frozen_acc > best.valid_acc + TIE
    for row, chosen in zip(rows, (not use_frozen, use_frozen), strict=True):
        log(f"  {row['candidate']}: valid accuracy {100 * row['valid_accuracy']:.2f}%, {row['seconds']:.0f} s"
            + ("  <- chosen" if chosen else ""))  # fmt: skip
    why = (f"measured on {len(splits['valid'])} validation images: {BACKBONE} frozen {100 * frozen_acc:.2f}% vs "
           f"from scratch {100 * best.valid_acc:.2f}% (a tie within {100 * TIE:.1f} points goes to the smaller "
           "from-scratch CNN)")  # fmt: skip
    if use_frozen:
        chosen = replace(frozen, evaluation=config.evaluation)
        chosen = replace(
            chosen, model=replace(chosen.model, strategy_candidates=rows + (chosen.model.strategy_candidates or []))
        )
        return with_decisions(chosen, model=why)
    return with_decisions(replace(scratch, model=replace(scratch.model, strategy_candidates=rows)), model=why)


def _chosen(config: RunConfig, name: str, why: str, log: Callable[[str], None] | None = None) -> RunConfig:
    if log is not None:
        log(f"model: {name} (auto: {why})")
    return with_decisions(replace(config, model=replace(config.model, name=name)), model=why)


def _silent(_: str) -> None:
    pass
