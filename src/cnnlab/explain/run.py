"""`cnnlab explain RUN [IMAGE...]`: what a trained run has learned, written to RUN/explain/ (or --output):
filters.png, feature_maps.png, attributions.png, deletion.png, embedding.png + embedding.csv, explain.json.

Without images it explains a fixed, seeded sample of the run's test split: the deletion test runs on
`deletion_images` of them (attributed to the true class), the pictures show a few right and a few wrong
ones, and the embedding takes a stratified `embed_samples`. Everything is written to a temporary folder
first, so a failure leaves the output as it was.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data.images import decode_files
from cnnlab.data.lazy import select
from cnnlab.data.splits import read_run_splits
from cnnlab.errors import CnnlabError
from cnnlab.explain import attributions as A
from cnnlab.explain import embedding as E
from cnnlab.explain import layers as L
from cnnlab.explain import pictures
from cnnlab.explain.embedding import EMBEDDINGS
from cnnlab.extras import require
from cnnlab.files import staging_dir, write_csv_atomic, write_json_atomic
from cnnlab.predict.infer import open_trained_run
from cnnlab.runs import RunFile

PICTURE_IMAGES = 8  # half right, half wrong where the sample has them
EMBED_WITHIN_BUDGET = 1000  # test images in the embedding when a budget cut the explained images (3,000 by default)
SMALL_SIDE = 64  # up to this input side, more images are explained (200 in the deletion test, not 24)
# What explaining costs by default, for a --budget-minutes that keeps it back: model runs as images scored
# (attributions, the deletion test, the embedding's features) plus seconds besides (t-SNE, figures, the report).
# Fitted on 2 cores to 28-px resnet_small / simple_cnn_bn (67 / 33 s) and a 224-px EfficientNet-Lite0 (90 s).
EXPLAIN_SMALL_IMAGES, EXPLAIN_LARGE_IMAGES, EXPLAIN_SECONDS = 124_000, 6_000, 13.0


@dataclass
class ExplainOptions:
    methods: list[str] | None = None  # default all
    layers: list[str] | None = None  # default: the stages
    embedding: str = "tsne"
    embed_samples: int = 3000
    deletion_images: int | None = None  # default by input size: 200 up to 64 px, else 24
    ig_steps: int | None = None
    occlusion_window: int | None = None
    occlusion_stride: int | None = None
    deletion_fill: str = "mean"  # or "blur": removed squares take a blurred copy's pixels
    seconds: float | None = None  # a time allowance (what a --budget-minutes leaves): fewer images where the
    # default's would not fit, at least PICTURE_IMAGES (see `_images_within`)


@dataclass
class Sample:
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray | None  # true classes (test split) or None (user images)
    names: list[str]  # test index or file path


def explain_run(
    run_dir: Path, images: list[Path] | None = None, *, output: Path | None = None,
    options: ExplainOptions | None = None, list_layers: bool = False, dry_run: bool = False, force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Explain `run_dir`'s best.pt on `images` (default: a seeded sample of its test split); see module doc."""
    require("captum", purpose="cnnlab explain")
    options = options or ExplainOptions()
    methods = A.check_methods(options.methods)
    if options.embedding not in EMBEDDINGS:  # checked before minutes of attributions, not after
        raise CnnlabError(f"unknown embedding '{options.embedding}' (choose from: {', '.join(EMBEDDINGS)})")
    if options.deletion_fill not in A.FILLS:
        raise CnnlabError(f"unknown --deletion-fill '{options.deletion_fill}' (choose from: {', '.join(A.FILLS)})")
    run_dir = Path(run_dir)
    model, ckpt, source, config = _load(run_dir)
    norm = ckpt.preprocessing.normalization()
    size = ckpt.preprocessing.image_size
    # what a forward pass costs: a pretrained backbone resizes every input to its own size (224 px)
    work_size = max(size, getattr(model, "input_size", 0) or 0)
    n_deletion = 1 if dry_run else (options.deletion_images or (200 if work_size <= SMALL_SIDE else 24))
    test = None if images else read_run_splits(run_dir / RunFile.SPLITS, source, needed=("test",), log=log)
    test = None if test is None else test.splits["test"]
    sample = _sample(test, source, ckpt, images, n_deletion, seed=config.train.seed)
    x = norm.apply(torch.from_numpy(sample.images)).float()
    layers = L.trace_layers(model, x[:1])
    if list_layers:
        log(format_layers(layers))
        return {"layers": [asdict(layer) for layer in layers]}
    out_dir = Path(output) if output is not None else run_dir / "explain"
    _check_output(out_dir, force=force, dry_run=dry_run)
    convolutional = any(layer.conv for layer in layers)
    if not convolutional:  # an MLP: no filters, feature maps or Grad-CAM; the other maps and t-SNE still apply
        if options.methods and "gradcam" in options.methods or options.layers:
            raise CnnlabError("this model has no convolution layer: Grad-CAM and feature maps need a CNN")
        methods = [m for m in methods if m != "gradcam"]
    settings = A.Settings.for_size(work_size, ig_steps=options.ig_steps, window=options.occlusion_window,
                                   stride=options.occlusion_stride)  # fmt: skip
    started = time.perf_counter()
    probs = _probabilities(model, x, settings.batch)
    fit = _images_within(options.seconds, (time.perf_counter() - started) / len(x), work_size, len(x))
    budget = None
    if fit < len(x) and images is None:  # a budget's remainder: fewer test images, drawn the same way
        budget = f"{fit} images explained, not {len(x)}: {options.seconds:.0f} s left of the budget"
        sample = _sample(test, source, ckpt, images, fit, seed=config.train.seed)
        x = norm.apply(torch.from_numpy(sample.images)).float()
        probs = _probabilities(model, x, settings.batch)
        options = replace(options, embed_samples=min(options.embed_samples, EMBED_WITHIN_BUDGET))
    predicted = probs.argmax(1)
    target = torch.as_tensor(sample.labels) if sample.labels is not None else predicted
    figures: dict[str, Any] = {}
    result: dict[str, Any] = {"run": str(run_dir), "images": len(x), "methods": methods, "settings": asdict(settings)}
    if budget is not None:
        result["budget"] = budget
    result["conv_layers"] = L.conv_weight_stats(model)
    cam_module = None
    if convolutional:
        cam_layer = L.gradcam_layer(layers)
        cam_module, result["gradcam_layer"] = L.module(model, cam_layer.name), cam_layer.name
        name, conv = L.first_conv(model)
        figures["filters.png"] = _pictures().filters_figure(conv.weight, name)
        chosen = L.pick_layers(layers, options.layers)
        maps = L.activations(model, x[:1], chosen)
        figures["feature_maps.png"] = _pictures().feature_maps_figure(sample.images[0], maps)
        result["feature_map_layers"] = [layer.name for layer in chosen]
    else:
        result["skipped"] = "filters, feature maps and Grad-CAM: the model has no convolution layer"
    all_maps = {m: A.attribute(model, x, target, m, layer=cam_module, settings=settings) for m in methods}
    result["deletion"] = _deletion(model, x, target, all_maps, patch=A.deletion_patch(size), seed=config.train.seed,
                                   fill=options.deletion_fill, batch=settings.batch)  # fmt: skip
    figures["deletion.png"] = _pictures().deletion_figure(A.FRACTIONS, result["deletion"]["curves"],
                                                          result["deletion"]["areas"])  # fmt: skip
    rows = _picture_rows(predicted.numpy(), sample.labels)
    figures["attributions.png"] = _attribution_picture(model, x, sample, rows, predicted, probs, source.class_names,
                                                       all_maps, target, cam_module, settings)  # fmt: skip
    result["pictures"] = [sample.names[i] for i, _ in rows]
    if images is None and not dry_run:
        result["embedding"], figures["embedding.png"], embedding_rows = _embedding(
            test, model, ckpt, source, config, options
        )
    else:
        embedding_rows = None
        result["embedding"] = {"skipped": "dry run" if dry_run else "needs labelled test images (no IMAGE arguments)"}
    log(format_summary(result))
    if dry_run:
        log(f"dry run ok: explained {len(x)} image(s); nothing written")
        return result
    _write(out_dir, figures, result, embedding_rows)
    log(f"wrote {out_dir}/ (filters, feature maps, attributions, deletion test, embedding, explain.json)")
    return result


def _probabilities(model, x: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]).softmax(1) for i in range(0, len(x), batch)])


def _images_within(seconds: float | None, forward_s: float, work_size: int, n: int) -> int:
    """How many of the `n` images explaining takes within `seconds` (None: all of them): each costs about the
    default's model runs per image (explain_work's images over the default count) at `forward_s` seconds per image
    (measured on the sample), after EXPLAIN_SECONDS besides; at least PICTURE_IMAGES, for the pictures.

    >>> [_images_within(s, 0.02, 224, 24) for s in (None, 1000.0, 100.0, 38.0)]  # 5 s an image at 224 px
    [24, 24, 17, 8]
    """
    if seconds is None:
        return n
    images, besides = explain_work(work_size, explained=1)
    per_image = images * forward_s
    return int(min(n, max(min(PICTURE_IMAGES, n), (seconds - besides) // per_image)))


def explain_work(work_size: int, explained: int | None = None) -> tuple[int, float]:
    """(images scored by the model, seconds besides) that explaining a run takes at this input side (the side its
    model computes at: a pretrained backbone's 224 px) with `explained` images (None: the default's 200 or 24; under
    a budget it takes at least PICTURE_IMAGES); an estimate, for budgets."""
    small = work_size <= SMALL_SIDE
    images = EXPLAIN_SMALL_IMAGES if small else EXPLAIN_LARGE_IMAGES
    default = 200 if small else 24
    return (images if explained is None else images * explained // default), EXPLAIN_SECONDS


def _pictures():
    return pictures


def _load(run_dir: Path):
    run = open_trained_run(run_dir, stream=True)  # a few hundred images are read, not the folder
    return L.explainable(run.model), run.checkpoint, run.source, run.config


def _sample(test: np.ndarray | None, source, ckpt, images: list[Path] | None, n: int, *, seed: int) -> Sample:
    """User images (decoded as training was), or `n` of the run's `test` images drawn with the run's seed."""
    prep = ckpt.preprocessing
    if images:
        arrays, kept = decode_files(images, size=prep.image_size, channels=prep.channels, crop_pct=prep.crop_pct,
                                    limit=n)  # fmt: skip
        return Sample(arrays, None, [str(p) for p in kept])
    idx = np.sort(np.random.default_rng(seed).choice(test, size=min(n, len(test)), replace=False))
    chosen = select(source.images, idx)[: len(idx)]  # a tensor, also from a streamed source
    return Sample(chosen.numpy(), source.labels[torch.as_tensor(idx)].numpy(), [str(int(i)) for i in idx])


def _check_output(out_dir: Path, *, force: bool, dry_run: bool) -> None:
    """An output folder of an earlier explain is refreshed; any other non-empty folder needs --force."""
    if dry_run or not out_dir.exists() or force:
        return
    if not out_dir.is_dir():
        raise CnnlabError(f"{out_dir} is a file (choose another --output)")
    if any(out_dir.iterdir()) and not (out_dir / RunFile.EXPLAIN_JSON).exists():
        raise CnnlabError(f"{out_dir} holds other files (choose another --output or pass --force)")


def _deletion(
    model, x, target, maps: dict[str, torch.Tensor], *, patch: int, seed: int, fill: str, batch: int
) -> dict[str, Any]:  # fmt: skip
    """Deletion curves of every map and of random removal, in forward passes of `batch` images (at 224 px, 24
    photos at once mapped 100 MB activations afresh each pass: 2x slower than 4 at a time)."""
    curves = {m: A.deletion_curve(model, x, maps[m], target, patch=patch, seed=seed, fill=fill, batch=batch)
              for m in maps}  # fmt: skip
    repeats = max(1, min(5, 200 // len(x)))  # few images: average random removal over several draws
    draws = [
        A.deletion_curve(model, x, None, target, patch=patch, seed=seed + 1 + i, fill=fill, batch=batch)
        for i in range(repeats)
    ]
    curves["random"] = np.mean(draws, axis=0)
    areas = {m: A.deletion_area(c) for m, c in curves.items()}
    at10 = A.FRACTIONS.index(0.1)
    return {
        "images": len(x), "patch_px": patch, "fill": fill, "fractions": list(A.FRACTIONS),
        "curves": {m: c.tolist() for m, c in curves.items()},
        "areas": areas, "drop_at_10pct": {m: float(c[0] - c[at10]) for m, c in curves.items()},
        "beats_random": {m: areas[m] < areas["random"] for m in maps},
    }  # fmt: skip


def _picture_rows(predicted: np.ndarray, labels: np.ndarray | None) -> list[tuple[int, int]]:
    """(image position, target class) rows: half right, half wrong test images (the wrong ones once for the
    predicted and once for the true class), or the first user images for their predicted class."""
    if labels is None:
        return [(i, int(predicted[i])) for i in range(min(PICTURE_IMAGES, len(predicted)))]
    right = np.flatnonzero(predicted == labels)
    wrong = np.flatnonzero(predicted != labels)[: PICTURE_IMAGES // 4]
    right = right[: PICTURE_IMAGES - 2 * len(wrong)]
    rows = [(int(i), int(predicted[i])) for i in right]
    for i in wrong:
        rows += [(int(i), int(predicted[i])), (int(i), int(labels[i]))]
    return rows


def _attribution_picture(model, x, sample: Sample, rows, predicted, probs, classes, all_maps, targets, layer, settings):
    """The picture rows' maps: those the deletion test already made (same image, same target) are reused;
    only a wrong image's second target is attributed here."""
    pos = [i for i, _ in rows]
    fresh = [k for k, (i, t) in enumerate(rows) if t != int(targets[i])]
    maps = {}
    for m, made in all_maps.items():
        chosen = made[pos].clone()
        if fresh:
            again = torch.as_tensor([rows[k][1] for k in fresh])
            chosen[fresh] = A.attribute(model, x[[pos[k] for k in fresh]], again, m, layer=layer, settings=settings)
        maps[m] = chosen.numpy()
    titles, correct = [], []
    for i, t in rows:
        p = int(predicted[i])
        truth = f" / true {classes[int(sample.labels[i])]}" if sample.labels is not None else ""
        why = "for pred" if t == p else "for true"
        titles.append(f"{why} {classes[t]} ({100 * float(probs[i, t]):.0f}%){truth if t == p else ''}")
        correct.append(sample.labels is None or p == int(sample.labels[i]))
    return _pictures().attributions_figure(sample.images[pos], maps, titles, correct)


def _embedding(test: np.ndarray, model, ckpt, source, config, options: ExplainOptions):
    labels = source.labels[torch.as_tensor(test)].numpy()
    pick = E.stratified_sample(labels, options.embed_samples, seed=config.train.seed)
    idx, labels = test[pick], labels[pick]
    norm = ckpt.preprocessing.normalization()
    features = E.penultimate(model, select(source.images, idx), norm, cache_dir=Path(config.data.root) / "cache")
    with torch.no_grad():
        predicted = model.forward_head(features).argmax(1).numpy()
    coords = E.embed(features.numpy(), options.embedding, seed=config.train.seed)
    summary = {
        "method": options.embedding, "samples": int(len(idx)), "knn_accuracy_2d": E.knn_accuracy(coords, labels),
        "model_accuracy": float((predicted == labels).mean()),
    }  # fmt: skip
    fig = _pictures().embedding_figure(coords, labels, predicted, source.class_names, options.embedding)
    rows = [(int(i), f"{a:.4f}", f"{b:.4f}", int(y), int(p)) for i, (a, b), y, p in zip(idx, coords, labels, predicted,
                                                                                        strict=True)]  # fmt: skip
    return summary, fig, rows


def _write(out_dir: Path, figures: dict[str, Any], result: dict[str, Any], embedding_rows) -> None:
    """All files into a temporary folder beside `out_dir`, then moved in: no half-written output."""
    with staging_dir(out_dir) as work:
        for name, fig in figures.items():
            fig.savefig(work / name, dpi=110, bbox_inches="tight")
        if embedding_rows is not None:
            write_csv_atomic(work / "embedding.csv", ["test_index", "x", "y", "label", "predicted"], embedding_rows)
        write_json_atomic(work / RunFile.EXPLAIN_JSON, result)
        out_dir.mkdir(exist_ok=True)
        for path in work.iterdir():
            shutil.move(str(path), str(out_dir / path.name))


def format_layers(layers: list[L.Layer]) -> str:
    """--list-layers: every layer with feature maps; stages and the Grad-CAM layer marked."""
    stages = {layer.name for layer in L.stage_layers(layers)}
    cam = L.gradcam_layer(layers).name if any(layer.conv for layer in layers) else None
    lines = [f"{'layer':<40} {'kind':<18} {'C x H x W':<14}"]
    for layer in layers:
        marks = ("stage " if layer.name in stages else "") + ("grad-cam" if layer.name == cam else "")
        lines.append(f"{layer.name:<40} {layer.kind:<18} {'x'.join(map(str, layer.shape)):<14} {marks}".rstrip())
    return "\n".join(lines)


def format_summary(r: dict[str, Any]) -> str:
    """Conv statistics, then the deletion table (which map to trust), then the embedding line."""
    lines = ["conv layers (weights): " + ("" if r["conv_layers"] else "none")]
    for c in r["conv_layers"]:
        shape = "x".join(map(str, c["shape"]))
        lines.append(f"  {c['layer']:<32} {shape:<14} mean {c['mean']:+.4f} std {c['std']:.4f} "
                     f"range [{c['min']:+.3f}, {c['max']:+.3f}] near-zero {100 * c['near_zero']:.1f}%")  # fmt: skip
    d = r["deletion"]
    filled = "set to the mean" if d["fill"] == "mean" else "blurred"
    lines.append(f"deletion test on {d['images']} images (class probability as the top-attributed {d['patch_px']}-px "
                 f"squares are {filled}; area: lower is better)")  # fmt: skip
    lines.append(f"  {'method':<22} {'area':>7} {'drop @10%':>10}  vs random")
    for m, area in sorted(d["areas"].items(), key=lambda kv: kv[1]):
        verdict = "" if m == "random" else ("beats random" if d["beats_random"][m] else "NO BETTER than random")
        lines.append(f"  {m:<22} {area:7.3f} {d['drop_at_10pct'][m]:10.3f}  {verdict}")
    e = r["embedding"]
    if "skipped" not in e:
        lines.append(f"embedding: {e['method']} of {e['samples']} test images; 5-NN accuracy in 2-D "
                     f"{100 * e['knn_accuracy_2d']:.1f}% (the model: {100 * e['model_accuracy']:.1f}%)")  # fmt: skip
    return "\n".join(lines)
