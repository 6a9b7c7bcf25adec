"""Frozen-backbone features, computed once and cached on disk, and batches over them.

With a frozen backbone every epoch would push the same images through the same layers; the course's
recipe does exactly that. Here each image goes through the backbone once (plus K augmented views if
asked) and the pooled features of every level are cached together, so feature extraction, truncation at
any level and their concatenations all read one file. The cache key is the images' bytes, the backbone's
weights and input size, the normalisation and the augmentation, so a changed input never reuses stale
features.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.data.augment import AugmentPolicy, augment_batch
from cnnlab.data.batches import Normalization
from cnnlab.data.cache import cache_key, load_cached, store_cached, tensor_digest
from cnnlab.data.lazy import row_view
from cnnlab.data.ranks import every_rank, gather_rows, process_share
from cnnlab.data.rowfile import RowFile, is_whole, row_writer
from cnnlab.predict.backends import choose_backend_at, temp_folder

# images per forward pass: 64 small ones; 32 photos at 224 px (ONNX Runtime's arena for 64 held 0.66 GB, for 32
# 0.33 GB, at 180 images/s against 185 on 2 cores: bench/RESULTS.md, issue 41)
BATCH, LARGE_BATCH, LARGE_SIDE = 64, 32, 128
BACKEND_SAMPLE = 16  # images each backend is timed on (eager PyTorch runs a 224-px Lite0 at about 50 images/s here)
BUILD_MIN_SECONDS = 8.0  # exporting a backbone takes about 5 s and saves about 3/4 of the eager pass: break-even ~7 s


class AllLevels(nn.Module):
    """A pretrained model's `forward_levels` as a module, so the prediction backends can export and time it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_levels(x)


def feature_backend(
    model, images, norm: Normalization, *, n_images: int, digest: str, cache_dir: Path | None,
    log: Callable[[str], None] | None = None,
) -> nn.Module:  # fmt: skip
    """The fastest agreeing backend for `model`'s all-level pass over `n_images` images like `images[:16]`. The
    ONNX file is kept beside the feature cache, named by the backbone's digest and the input shape."""
    sample = norm.apply(images[:BACKEND_SAMPLE]).contiguous()
    folder = Path(cache_dir) / "features" if cache_dir is not None else temp_folder()
    path = folder / f"levels-{digest}-{'x'.join(map(str, sample.shape[1:]))}.onnx"
    quiet = log or (lambda _line: None)
    try:
        chosen = choose_backend_at(AllLevels(model), path, sample, n_images=n_images, log=quiet,
                                   build_min_seconds=BUILD_MIN_SECONDS)  # fmt: skip
    except Exception as error:  # the exporter cannot trace every timm backbone: eager PyTorch always can
        quiet(f"features: eager PyTorch (no ONNX Runtime graph of this backbone: {str(error).splitlines()[0][:120]})")
        return AllLevels(model)
    quiet(f"features on {'ONNX Runtime' if chosen.name == 'onnx' else 'PyTorch'}: {chosen.why}")
    return chosen.forward


def feature_batch(side: int) -> int:
    """Images per forward pass of the feature pass at this input side."""
    return LARGE_BATCH if side > LARGE_SIDE else BATCH


def _batches(forward: nn.Module, images, norm: Normalization, policy, gen, batch_size: int, device, *,
             mirror: bool = False) -> Iterator[torch.Tensor]:  # fmt: skip
    """`forward`'s features of `images` (mirrored left-right with `mirror`), one batch at a time: the split is never
    copied whole."""
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            x = x.flip(-1) if mirror else x
            if policy is not None and policy.active:
                x = augment_batch(x.float() * (1 / 255), policy, gen)
            layout = torch.channels_last if getattr(forward, "channels_last", True) else torch.contiguous_format
            yield forward(norm.apply(x).contiguous(memory_format=layout))


def _compute(forward: nn.Module, images, norm: Normalization, policy, gen, batch_size: int, device, *,
             mirror: bool = False) -> torch.Tensor:  # fmt: skip
    """`_batches` written into one tensor made at the first batch: each batch's result kept in a list sat between
    its freed temporaries and kept glibc's heap from reusing them (a 5,000-photo pass grew by 1 GB and kept it)."""
    out, start = torch.empty(0), 0
    for y in _batches(forward, images, norm, policy, gen, batch_size, device, mirror=mirror):
        if start == 0:
            out = torch.empty(len(images), *y.shape[1:])
        out[start : start + len(y)] = y
        start += len(y)
    return out


def backbone_feature_rows(model, images, norm: Normalization, *, cache_dir: Path, log: Callable[[str], None] | None
                          = None, only_cached: bool = False) -> RowFile | np.ndarray | None:  # fmt: skip
    """The plain all-level features [N, D_all] of uint8 `images` as a row file in the cache (one process, no views),
    written a batch at a time as the backbone computes them and read back a block of rows at a time: the audit's
    checks never hold them whole (0.6 GB at 100,000 photos: bench/RESULTS.md, issue 41). With `only_cached`, None
    when they are not there yet. A cache that cannot be written costs the streaming: the features come back in
    memory (a warning says why)."""
    model.eval()
    digest = model.backbone_digest()
    path = Path(cache_dir) / "features" / f"{cache_key('feature-rows-v1', digest, tensor_digest(images), norm)}.npy"
    if is_whole(path):
        return RowFile(path)
    if only_cached:
        return None
    if len(images) == 0:
        return backbone_features(model, images, norm, cache_dir=None)[0].numpy()
    if log:
        log(f"features: {len(images)} images through the frozen backbone (written to the cache as they come)")
    forward = feature_backend(model, images, norm, n_images=len(images), digest=digest, cache_dir=cache_dir, log=log)
    batch, device = feature_batch(int(images.shape[-1])), next(model.parameters()).device
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with row_writer(path, len(images)) as write:
            for y in _batches(forward, images, norm, None, None, batch, device):
                write(y.numpy())
        return RowFile(path)
    except OSError as exc:  # WriteFailed too: the pass again, held in memory
        warnings.warn(f"cannot write the feature cache {path} ({exc}); the features are held in memory", stacklevel=2)
        return _compute(forward, images, norm, None, None, batch, device).numpy()


def backbone_features(
    model,
    images: torch.Tensor,
    norm: Normalization,
    *,
    cache_dir: Path | None,
    views: int = 0,
    policy: AugmentPolicy | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    log: Callable[[str], None] | None = None,
    only_cached: bool = False,
    mirror: bool = False,
    shared: bool = False,
) -> torch.Tensor | None:
    """All-level features [1 + views, N, D_all] of uint8 `images` [N, C, H, W]: view 0 plain, views 1..
    augmented by `policy`; `model.select_levels` turns them into that model's features.

    `model` is a PretrainedClassifier (its `forward_levels` in eval mode). Cached under `cache_dir`
    when given; a second call with the same inputs reads the file instead of running the backbone. With
    `only_cached`, None instead of computing what is not cached. With `mirror`, of the images mirrored left-right
    (a frozen head's test-time flips: evaluate.evaluate's `_choose_tta`), cached apart from the plain ones.

    With `shared`, every DDP process calls this together: each computes every world-th image and the shares are
    gathered (data/ranks.py), and the cache is read only when every process can read it. Augmented views then draw
    their random transforms per share, so they differ from one process's (the plain view does not).
    """
    device = next(model.parameters()).device
    model.eval()
    batch_size = batch_size or feature_batch(int(images.shape[-1]))

    rank, world = process_share() if shared else (0, 1)

    def compute() -> dict:
        if log:
            mirrored = " mirrored" if mirror else ""
            each = f"; each of {world} processes computes 1 image in {world}" if world > 1 else ""
            log(f"features: {len(images)}{mirrored} images x {1 + views} view(s) through the frozen backbone (cached "
                f"after{each})")  # fmt: skip
        if len(images) == 0:
            width = sum(model.level_widths()[v] for v in model.all_levels())
            return {"features": torch.empty(1 + views, 0, width)}
        mine = images if world == 1 else row_view(images, torch.arange(rank, len(images), world))
        forward = feature_backend(model, mine, norm, n_images=len(mine) * (1 + views), digest=digest,
                                  cache_dir=cache_dir, log=log)  # fmt: skip
        gen = torch.Generator().manual_seed(seed)
        stack = [_compute(forward, mine, norm, None, gen, batch_size, device, mirror=mirror)]
        stack += [_compute(forward, mine, norm, policy, gen, batch_size, device, mirror=mirror) for _ in range(views)]
        # [1 + views, this process's images, D]; one view is not copied (0.83 GB at 100,000 photos' every level)
        features = stack[0].unsqueeze(0) if len(stack) == 1 else torch.stack(stack)
        if world > 1:
            features = gather_rows(features.transpose(0, 1), len(images)).transpose(0, 1).contiguous()
        return {"features": features}

    digest = model.backbone_digest()
    if cache_dir is None:
        return compute()["features"]
    aug = repr(policy) if views else ""
    mirrored = ("mirror",) if mirror else ()  # plain features keep the key they had before mirroring existed
    key = cache_key("features-v2", digest, tensor_digest(images), norm, views, aug, seed, *mirrored)
    path = Path(cache_dir) / "features" / f"{key}.pt"
    if only_cached and not path.is_file():
        return None
    entry = load_cached(path)
    if not (every_rank(entry is not None) if world > 1 else entry is not None):
        entry = compute()
        store_cached(path, entry)  # each process its own copy: nodes may not share a disk
    return entry["features"]
