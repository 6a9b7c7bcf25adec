"""`cnnlab autoencode`: train one of the course's autoencoders (plain or denoising) on any data source, keep the
epoch with the lowest validation reconstruction loss, and evaluate it on the test split.

The run folder is laid out like `cnnlab train`'s: config.yaml, splits.json, metrics.csv, best.pt / last.pt
(state_dicts loaded with weights_only=True), eval.json, plots/. Images are scaled to [0, 1] and reconstructed
through a sigmoid; the denoising variant adds Gaussian noise of standard deviation `noise` (clipped to [0, 1])
to the input and keeps the clean image as the target. Metrics (MSE, PSNR, SSIM) come from torchmetrics; with
`noise`, the noisy input is scored the same way so that the gain is visible. With `anomaly`, a class is held
out of training (or another data source is brought in) and the reconstruction error scores it as
out-of-distribution, summarised by cnnlab's ROC AUC.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from cnnlab.config import DataConfig
from cnnlab.data.sources import SOURCE_NAMES, Source, load_source
from cnnlab.data.splits import make_splits, save_splits
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.metrics import roc_auc
from cnnlab.explain.embedding import embed
from cnnlab.figures import new_figure
from cnnlab.files import save_figure_atomic, save_torch_atomic, write_json_atomic, write_text_atomic
from cnnlab.models.autoencoder import create_autoencoder
from cnnlab.runs import RunFile, claim_run_dir, creating_run_dir, source_slug
from cnnlab.training.fit import BestTracker

LOSSES = ("mse", "bce")
KIND = "autoencoder"


@dataclass(frozen=True)
class AutoencodeOptions:
    data: str = "fashion-mnist"
    model: str = "conv-upsample"  # linear | conv | conv-upsample
    latent: int = 32
    noise: float = 0.0  # > 0: the denoising variant (Gaussian noise, this standard deviation on the 0..1 scale)
    loss: str = "mse"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    budget_minutes: float | None = None
    anomaly: str | None = None  # a class name held out of training, or another data source
    image_size: int | None = None
    data_root: str = "data"
    train_limit: int | None = None

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise CnnlabError(f"unknown --loss '{self.loss}' (choose from: {', '.join(LOSSES)})")
        if not 0 <= self.noise <= 1:
            raise CnnlabError(f"--noise is a standard deviation on the 0..1 pixel scale: 0..1, got {self.noise}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise CnnlabError("--epochs and --batch-size must be >= 1 and --lr > 0")


@dataclass
class Data:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: np.ndarray
    class_names: list[str]
    splits: dict[str, np.ndarray]
    source: Source  # what splits.json records the splits' images by
    outliers: torch.Tensor | None = None  # another source's images, for --anomaly DATASET


def autoencode(options: AutoencodeOptions, *, runs_dir: Path = Path("runs"), name: str | None = None,
               force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Train, evaluate and draw; returns eval.json's content."""
    options.check()
    data = _load(options, log)
    channels, size = int(data.images.shape[1]), int(data.images.shape[-1])
    torch.manual_seed(options.seed)  # the initial weights
    model = create_autoencoder(options.model, channels=channels, size=size, latent=options.latent)
    name = name or f"{source_slug(options.data)}-ae-{options.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = claim_run_dir(runs_dir, name, force=force)
    log(f"data: {options.data}, {channels}x{size}px; train {len(data.splits['train'])} / valid "
        f"{len(data.splits['valid'])} / test {len(data.splits['test'])}"
        + (f"; anomaly: {options.anomaly}" if options.anomaly else ""))  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {options.model} autoencoder, latent {options.latent}, {n_params:,} parameters; loss {options.loss}"
        + (f"; denoising, noise {options.noise}" if options.noise else ""))  # fmt: skip
    with creating_run_dir(run_dir):
        _write_yaml(run_dir / RunFile.CONFIG, {"kind": KIND, **asdict(options)})
        save_splits(data.splits, run_dir / RunFile.SPLITS, source=data.source, seed=options.seed)
        _fit(model, data, options, run_dir, log)
    result = evaluate(run_dir, data=data, log=log)
    log(f"run folder: {run_dir}")
    return result


def resume(run_dir: Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Continue an interrupted autoencoder run from last.pt to its planned epochs, then evaluate it."""
    run_dir = Path(run_dir)
    _, options, _ = load_autoencoder(run_dir, checkpoint=RunFile.LAST)
    last = torch.load(run_dir / RunFile.LAST, map_location="cpu", weights_only=True)
    if last["epoch"] >= options.epochs:
        log(f"{run_dir} already trained {last['epoch']} of {options.epochs} epochs; evaluating")
    else:
        log(f"resuming {run_dir} after epoch {last['epoch']} of {options.epochs}")
    data = _load(options, log)
    model = create_autoencoder(options.model, channels=last["channels"], size=last["size"], latent=last["latent"])
    _fit(model, data, options, run_dir, log, last=last)
    return evaluate(run_dir, data=data, log=log)


def _load(options: AutoencodeOptions, log) -> Data:
    source = load_source(DataConfig(source=options.data, root=options.data_root, image_size=options.image_size),
                         log=log)  # fmt: skip
    labels = source.labels.numpy()
    splits = make_splits(labels, source.partitions, valid_fraction=0.2, test_fraction=0.2, seed=options.seed,
                         train_limit=options.train_limit)  # fmt: skip
    data = Data(source.images, labels, source.class_names, splits, source)
    if options.anomaly is None:
        return data
    if options.anomaly in source.class_names:  # normal = every other class; the test split keeps all
        k = source.class_names.index(options.anomaly)
        data.splits = {s: (idx if s == "test" else idx[labels[idx] != k]) for s, idx in splits.items()}
        return data
    try:
        other = load_source(DataConfig(source=options.anomaly, root=options.data_root), log=log)
    except CnnlabError as exc:
        raise CnnlabError(f"--anomaly '{options.anomaly}' is neither a class of {options.data} "
                          f"({', '.join(source.class_names)}) nor a data source ({', '.join(SOURCE_NAMES)}): "
                          f"{exc}") from exc  # fmt: skip
    data.outliers = _resized(other.images, source.images.shape[1:])
    return data


def _resized(images: torch.Tensor, shape) -> torch.Tensor:
    """Another source's images at this source's channels and size (area resampling; grey <-> RGB)."""
    channels, size = int(shape[0]), int(shape[-1])
    x = images.float()
    x = x.mean(1, keepdim=True) if channels == 1 and x.shape[1] != 1 else x
    x = x.expand(-1, channels, -1, -1) if x.shape[1] == 1 and channels == 3 else x
    x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] >= size else "bilinear", align_corners=None)
    return x.round().clamp(0, 255).to(torch.uint8)


def noisy(x: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """`x` (0..1) plus Gaussian noise of standard deviation `noise`, clipped to 0..1."""
    if noise <= 0:
        return x
    return (x + noise * torch.randn(x.shape, generator=generator)).clamp(0, 1)


def _loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(torch.sigmoid(logits), target)


def _batches(data: Data, split: str, batch: int, *, shuffle: torch.Generator | None = None):
    idx = torch.as_tensor(data.splits[split])
    if shuffle is not None:
        idx = idx[torch.randperm(len(idx), generator=shuffle)]
    for start in range(0, len(idx), batch):
        yield data.images[idx[start : start + batch]].float() / 255


def _fit(model, data: Data, o: AutoencodeOptions, run_dir: Path, log, *, last: dict | None = None) -> None:
    """Epochs 1..o.epochs, or from the epoch after `last` (last.pt's content: weights, optimiser, history), so
    that a resumed run ends with the weights an uninterrupted one would have."""
    optimizer = torch.optim.Adam(model.parameters(), lr=o.lr)
    best, rows, first = BestTracker(patience=None), [], 1
    if last is not None:
        model.load_state_dict(last["state_dict"])
        optimizer.load_state_dict(last["optimizer"])
        rows = [dict(zip(("epoch", "train_loss", "valid_loss", "seconds"), r, strict=True)) for r in last["rows"]]
        best = BestTracker(patience=None, best_loss=last["best_loss"], best_epoch=last["best_epoch"])
        first = last["epoch"] + 1
    deadline = time.monotonic() + 60 * o.budget_minutes if o.budget_minutes else math.inf
    for epoch in range(first, o.epochs + 1):
        start = time.perf_counter()
        model.train()
        gen, total, n = torch.Generator().manual_seed(o.seed * 1000 + epoch), 0.0, 0
        for x in _batches(data, "train", o.batch_size, shuffle=gen):
            loss = _loss(model(noisy(x, o.noise, gen)), x, o.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, n = total + loss.item() * len(x), n + len(x)
        valid = reconstruction_loss(model, data, "valid", o)
        row = {"epoch": epoch, "train_loss": total / n, "valid_loss": valid, "seconds": time.perf_counter() - start}
        rows.append(row)
        state = {"kind": KIND, "design": o.model, "latent": o.latent, "channels": int(data.images.shape[1]),
                 "size": int(data.images.shape[-1]), "epoch": epoch, "state_dict": model.state_dict()}  # fmt: skip
        improved = best.update(epoch, valid)
        if improved:
            save_torch_atomic(state, run_dir / RunFile.BEST)
        history = [[r["epoch"], r["train_loss"], r["valid_loss"], r["seconds"]] for r in rows]
        resumable = {"optimizer": optimizer.state_dict(), "rows": history, "best_loss": best.best_loss,
                     "best_epoch": best.best_epoch}  # fmt: skip
        save_torch_atomic({**state, **resumable}, run_dir / RunFile.LAST)
        _write_metrics(run_dir / RunFile.METRICS, rows)
        log(f"epoch {epoch:3d}/{o.epochs}  train loss {row['train_loss']:.5f}  valid loss {valid:.5f}  "
            f"{row['seconds']:.1f}s" + ("  * best" if improved else ""))  # fmt: skip
        if time.monotonic() > deadline:
            log(f"budget of {o.budget_minutes} minute(s) reached after epoch {epoch}")
            break


@torch.inference_mode()
def reconstruction_loss(model, data: Data, split: str, o: AutoencodeOptions) -> float:
    """Mean loss over `split`, with the same noise every time (a fixed generator): comparable across epochs."""
    model.eval()
    gen, total, n = torch.Generator().manual_seed(o.seed + 7), 0.0, 0
    for x in _batches(data, split, 512):
        total, n = total + float(_loss(model(noisy(x, o.noise, gen)), x, o.loss)) * len(x), n + len(x)
    return total / max(n, 1)


def _write_metrics(path: Path, rows: list[dict]) -> None:
    lines = ["epoch,train_loss,valid_loss,seconds"] + [
        f"{r['epoch']},{r['train_loss']:.6f},{r['valid_loss']:.6f},{r['seconds']:.2f}" for r in rows
    ]
    write_text_atomic(path, "\n".join(lines) + "\n")


def load_autoencoder(run_dir: Path, *, checkpoint: str = RunFile.BEST):
    """`checkpoint` of an autoencoder run as a model in eval mode, its options and its epoch."""
    path = Path(run_dir) / checkpoint
    config = Path(run_dir) / RunFile.CONFIG
    raw = yaml.safe_load(config.read_text()) if config.is_file() else None
    if not isinstance(raw, dict) or raw.pop("kind", None) != KIND:
        raise CnnlabError(f"{run_dir} is not an autoencoder run (make one with cnnlab autoencode)")
    if not path.is_file():
        raise CnnlabError(f"{path} is missing (the run stopped before its first epoch; train it again)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = create_autoencoder(state["design"], channels=state["channels"], size=state["size"], latent=state["latent"])
    model.load_state_dict(state["state_dict"])
    return model.eval(), AutoencodeOptions(**raw), state["epoch"]


@torch.inference_mode()
def reconstruct(model, x: torch.Tensor, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(model input, reconstruction) for clean images `x` (0..1), in batches."""
    gen = torch.Generator().manual_seed(seed + 11)
    inputs = torch.cat([noisy(x[i : i + 512], noise, gen) for i in range(0, len(x), 512)])
    out = torch.cat([torch.sigmoid(model(inputs[i : i + 512])) for i in range(0, len(x), 512)])
    return inputs, out


def image_quality(estimate: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MSE, PSNR (dB, mean over images) and SSIM (mean) of `estimate` against `target`, both 0..1 (torchmetrics)."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )  # optional heavy import: torchmetrics (image metrics, autoencoder evaluation only)

    size = int(target.shape[-1])
    kernel = min(11, size - 1 if size % 2 == 0 else size)  # odd, and no larger than the image
    psnr = peak_signal_noise_ratio(estimate, target, data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean")
    ssim = structural_similarity_index_measure(estimate, target, data_range=1.0, kernel_size=kernel)
    return {"mse": float(F.mse_loss(estimate, target)), "psnr_db": float(psnr), "ssim": float(ssim)}


def evaluate(run_dir: Path, *, data: Data | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The best epoch on the test split: eval.json and plots/ (reconstructions, latent space)."""
    model, o, epoch = load_autoencoder(run_dir)
    data = data or _load(o, log=lambda _: None)
    test = torch.as_tensor(data.splits["test"])
    x = data.images[test].float() / 255
    inputs, out = reconstruct(model, x, o.noise, o.seed)
    result: dict[str, Any] = {"kind": KIND, "model": o.model, "latent": o.latent, "loss": o.loss, "noise": o.noise,
                              "epoch": epoch, "n_test": len(x), "reconstruction": image_quality(out, x)}  # fmt: skip
    if o.noise:
        result["noisy_input"] = image_quality(inputs, x)
        result["psnr_gain_db"] = result["reconstruction"]["psnr_db"] - result["noisy_input"]["psnr_db"]
    if o.anomaly:
        result["anomaly"] = _anomaly(model, data, o, x, out)
    figures = {"reconstructions.png": _reconstruction_figure(x, inputs, out, o),
               "latent.png": _latent_figure(model, inputs, data.labels[test], data.class_names, o)}  # fmt: skip
    (run_dir / RunFile.PLOTS).mkdir(exist_ok=True)
    for file, fig in figures.items():
        save_figure_atomic(fig, run_dir / RunFile.PLOTS / file, dpi=110)
    write_json_atomic(run_dir / RunFile.EVAL, result)
    log(format_result(result))
    return result


def _anomaly(model, data: Data, o: AutoencodeOptions, x: torch.Tensor, out: torch.Tensor) -> dict[str, Any]:
    """ROC AUC of the per-image reconstruction error as an out-of-distribution score."""
    error = ((out - x) ** 2).flatten(1).mean(1).numpy()
    if data.outliers is None:
        k = data.class_names.index(o.anomaly)
        truth = data.labels[data.splits["test"]] == k
    else:
        rng = np.random.default_rng(o.seed)
        pick = rng.choice(len(data.outliers), min(len(x), len(data.outliers)), replace=False)
        other = data.outliers[torch.as_tensor(pick)].float() / 255
        _, rebuilt = reconstruct(model, other, o.noise, o.seed + 1)
        error = np.concatenate([error, ((rebuilt - other) ** 2).flatten(1).mean(1).numpy()])
        truth = np.r_[np.zeros(len(x), bool), np.ones(len(other), bool)]
    return {"what": o.anomaly, "normal": int((~truth).sum()), "anomalous": int(truth.sum()),
            "auc": float(roc_auc(truth, error)), "score": "per-image reconstruction MSE"}  # fmt: skip


def _reconstruction_figure(x, inputs, out, o: AutoencodeOptions, n: int = 10):
    rows = [("input (noisy)", inputs), ("reconstruction", out), ("original", x)] if o.noise else [
        ("original", x), ("reconstruction", out)]  # fmt: skip
    fig = new_figure((1.1 * n, 1.2 * len(rows) + 0.3))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                img = images[c].permute(1, 2, 0).numpy()
                ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(title, fontsize=8, loc="left")
    fig.suptitle(f"{o.model} autoencoder, latent {o.latent}", fontsize=9)
    return fig


@torch.inference_mode()
def _latent_figure(model, inputs, labels, class_names, o: AutoencodeOptions, n: int = 2000):
    inputs = inputs[:n]
    z = torch.cat([model.encode(inputs[i : i + 512]) for i in range(0, len(inputs), 512)]).numpy()
    coords = embed(z, "pca", seed=o.seed)
    fig = new_figure((6, 5))
    ax = fig.subplots()
    shown = labels[: len(coords)]
    for k, name in enumerate(class_names):
        m = shown == k
        ax.scatter(coords[m, 0], coords[m, 1], s=4, label=name)
    ax.legend(fontsize=6, markerscale=3)
    ax.set_title(f"latent space ({o.latent}-d) of {len(coords)} test images, PCA", fontsize=9)
    return fig


def compare(run_dirs: list[Path], output: Path, *, n: int = 10, force: bool = False) -> list[dict[str, float]]:
    """The same test images through several autoencoder runs of the same data, side by side (e.g. `conv` vs
    `conv-upsample`: the transposed convolution's checkerboard shows at this size), written as one PNG."""
    if output.exists() and not force:
        raise CnnlabError(f"{output} already exists (choose another --output or pass --force)")
    loaded = [load_autoencoder(r) for r in run_dirs]
    if len({(o.data, o.image_size, o.seed) for _, o, _ in loaded}) > 1:
        raise CnnlabError("the runs to compare were trained on different data or splits (same --data and --seed)")
    data = _load(loaded[0][1], log=lambda _: None)
    x = data.images[torch.as_tensor(data.splits["test"][:n])].float() / 255
    rows, scores = [("original", x)], []
    for (model, o, _), run in zip(loaded, run_dirs, strict=True):
        _, out = reconstruct(model, x, 0.0, o.seed)
        q = image_quality(out, x)
        scores.append(q)
        rows.append((f"{Path(run).name}: {o.model}, PSNR {q['psnr_db']:.1f} dB", out))
    fig = new_figure((1.1 * n, 1.25 * len(rows) + 0.2))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(n):
            img = images[c].permute(1, 2, 0).numpy()
            axes[r][c].imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1,
                              interpolation="nearest")  # fmt: skip
            axes[r][c].axis("off")
        axes[r][0].set_title(title, fontsize=8, loc="left")
    output.parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(fig, output, dpi=110)
    return scores


def format_result(r: dict[str, Any]) -> str:
    q = r["reconstruction"]
    lines = [f"test ({r['n_test']} images), best epoch {r['epoch']}: reconstruction MSE {q['mse']:.5f}, "
             f"PSNR {q['psnr_db']:.2f} dB, SSIM {q['ssim']:.3f}"]  # fmt: skip
    if "noisy_input" in r:
        n = r["noisy_input"]
        lines.append(f"  noisy input (noise {r['noise']}): MSE {n['mse']:.5f}, PSNR {n['psnr_db']:.2f} dB, SSIM "
                     f"{n['ssim']:.3f}; denoising gains {r['psnr_gain_db']:.2f} dB")  # fmt: skip
    if "anomaly" in r:
        a = r["anomaly"]
        lines.append(f"  anomaly '{a['what']}' by reconstruction error: ROC AUC {a['auc']:.3f} "
                     f"({a['normal']} normal vs {a['anomalous']} anomalous test images)")  # fmt: skip
    return "\n".join(lines)


def _write_yaml(path: Path, payload: dict) -> None:
    write_text_atomic(path, yaml.safe_dump(payload, sort_keys=False))


def autoencode_command(
    options: AutoencodeOptions, *, runs_dir: Path = Path("runs"), name: str | None = None, force: bool = False,
    compare_runs: list[Path] | None = None, output: Path = Path("autoencoders.png"), resume_run: Path | None = None,
    log: Callable[[str], None] = print,
) -> None:  # fmt: skip
    """`cnnlab autoencode`: train (the default), continue a run (`resume_run`, no other options), or draw the
    same test images through several runs (`compare_runs`)."""
    if resume_run is not None:
        given = [k for k, v in asdict(options).items() if v != getattr(AutoencodeOptions(), k)]
        given += ["--name"] * bool(name) + ["--compare"] * bool(compare_runs)
        if given:
            raise CnnlabError(f"--resume continues the saved plan; drop {', '.join(given)}")
        resume(resume_run, log=log)
    elif compare_runs:
        if len(compare_runs) < 2:
            raise CnnlabError("--compare needs two runs or more (--compare runs/a --compare runs/b)")
        scores = compare(compare_runs, output, force=force)
        for path, q in zip(compare_runs, scores, strict=True):
            log(f"{path}: PSNR {q['psnr_db']:.2f} dB, SSIM {q['ssim']:.3f} on the pictured images")
        log(f"wrote {output}")
    else:
        autoencode(options, runs_dir=runs_dir, name=name, force=force, log=log)
