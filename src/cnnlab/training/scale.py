"""A budget that knows the data: before a large folder is decoded, how many of its images the model search can see
within `--budget-minutes`, from the measured cost of one image (decoding it and one pass through the backbone).

Every image a run uses is decoded once (into the decoded-image cache) and passes the frozen backbone once (train
and valid in the model search, test when the run is scored). On 100,000 photos that work alone took about 15
minutes on two cores, and the default 5-minute command ran for 58 (bench/RESULTS.md): the plan now says so before
it starts and uses a share of the folder's files that fits (`DataConfig.sample`, chosen by a hash of each path, so
the same files on every command: data/identity.py `sampled`), with the budget that would take them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from cnnlab.config import RunConfig, with_decisions
from cnnlab.data.batches import Normalization
from cnnlab.data.sources import decode_listing
from cnnlab.models import create_model
from cnnlab.models.pretrained import backbone_preprocessing, load_pretrained
from cnnlab.predict.features import feature_backend, feature_batch

PASS_SHARE = 0.6  # of the budget left once explaining is kept back: decoding every image used, its backbone pass and
# the scored splits' passes; the rest is listing, the audit gate, the heads' fits (their L2 paths stop at a share of
# the budget) and the report (100,000 photos here: 5,000 ranked rows per head, 40 s of heads in all)
SCORED_PASSES = 2  # the validation and test splits are scored again after training, mirrored too where flips apply
PROBE_FROM = 5_000  # images: smaller folders are not measured (their pass takes seconds of any budget)
PROBE_IMAGES = 48  # files decoded and passed through the backbone to time one image
EAGER_BATCH = 16  # images per eager pass timed (explaining runs a few at a time)
WARMUP_IMAGES = 8  # the backbone's first batch pays one-off costs (allocations, kernel selection)


def sample_for_budget(
    config: RunConfig, files: list[Path], *, seconds: float, backbone: str, kept: tuple[int, float],
    log: Callable[[str], None],
) -> RunConfig:  # fmt: skip
    """`config` with `data.sample` set when decoding the folder's images (`files`, its listing) and their backbone
    passes (once each, and the scored splits SCORED_PASSES times more) would take more than PASS_SHARE of the
    `seconds` left of the budget once `kept` (the work after training, in images scored and seconds besides:
    explaining) is kept back; said and recorded under `decisions: sample`. Unchanged for smaller folders, a sample
    the user set, or several processes (each would measure, and could choose, a different share)."""
    d, t = config.data, config.train
    if d.sample is not None or t.devices * t.num_nodes > 1:
        return config
    if len(files) < PROBE_FROM:
        return config
    folder = Path(d.source.removeprefix("folder:"))
    decode_s, forward_s, eager_s = image_seconds(folder, files, backbone, size=d.image_size or 224,
                                                 crop_pct=d.crop_pct, cache_dir=Path(d.root) / "cache")  # fmt: skip
    scored = d.test_fraction + (1 - d.test_fraction) * d.valid_fraction  # of the images, for a folder without splits
    per_image = decode_s + forward_s * (1 + SCORED_PASSES * scored)
    kept_s = kept[0] * eager_s + kept[1]  # explaining runs the model in PyTorch (attributions need its gradients)
    room = PASS_SHARE * (seconds - kept_s)
    fits = int(max(room, 0.0) / per_image)
    if fits >= len(files):
        return config
    share = max(fits, 1) / len(files)
    whole = (len(files) * per_image / PASS_SHARE + kept_s) / 60
    why = (f"decoding and scoring all {len(files):,} images would take about {len(files) * per_image / 60:.1f} min "
           f"here ({1000 * decode_s:.1f} ms decoding + {1000 * forward_s:.1f} ms per pass through {backbone}, measured "
           f"on {PROBE_IMAGES} of them), over {PASS_SHARE:.0%} of the {seconds / 60:.1f} min left once explaining is "
           f"kept back ({kept_s:.0f} s): a {share:.1%} "
           f"sample of the files, about {fits:,} images, chosen by a hash of each path (the same files every time); "
           f"--budget-minutes {max(1, round(whole + 0.5))} would use them all (--sample 1: all anyway)")  # fmt: skip
    log(f"data: {why}")
    return with_decisions(replace(config, data=replace(d, sample=round(share, 6))), sample=why)


def image_seconds(
    folder: Path, files: list[Path], backbone: str, *, size: int, crop_pct: float, cache_dir: Path
) -> tuple[float, float, float]:
    """Seconds to decode one image (PROBE_IMAGES files spread over the listing, on a thread per core as the cache
    fill does), to pass it through `backbone`'s frozen all-level features on the backend the feature pass will
    use (predict/features.py: ONNX Runtime where it is faster; its graph and timing are kept in `cache_dir` and
    reused by that pass), and through the model in eager PyTorch, measured here."""
    step = max(len(files) // PROBE_IMAGES, 1)
    probe = [("train", path, 0) for path in files[::step][:PROBE_IMAGES]]
    started = time.perf_counter()
    images = decode_listing(folder, probe, size, crop_pct)["images"]  # as the cache fill decodes
    decode_s = (time.perf_counter() - started) / len(probe)
    if not len(images):
        return decode_s, 0.0, 0.0
    batch = images
    model = create_model(backbone, num_classes=2, in_channels=3, image_size=size, strategy="feature-extract")
    load_pretrained(model)
    prep = backbone_preprocessing(backbone)
    norm = Normalization(prep.mean, prep.std)
    forward = feature_backend(model.eval(), batch, norm, n_images=len(files), digest=model.backbone_digest(),
                              cache_dir=cache_dir)  # fmt: skip
    x = norm.apply(batch).contiguous(
        memory_format=torch.channels_last if getattr(forward, "channels_last", True) else torch.contiguous_format
    )
    return (
        decode_s,
        _seconds_per_image(forward, x, feature_batch(size)),
        _seconds_per_image(model, x.contiguous(memory_format=torch.channels_last), EAGER_BATCH),
    )


@torch.inference_mode()
def _seconds_per_image(forward, x: torch.Tensor, batch: int) -> float:
    """Seconds per image through `forward` in passes of `batch` (as the pass it predicts runs; all 48 photos at
    once held 0.5 GB more)."""
    forward(x[:WARMUP_IMAGES])
    started = time.perf_counter()
    for i in range(0, len(x), batch):
        forward(x[i : i + batch])
    return (time.perf_counter() - started) / len(x)
