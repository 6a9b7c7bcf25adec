"""`cnnlab` command line: thin Typer commands that build a config and call the Python API.

Errors a user can fix print one line `error: <what> (<how to fix>)` and exit 2; `--debug` shows tracebacks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from cnnlab.data.memory import return_freed_memory
from cnnlab.errors import CnnlabError
from cnnlab.extras import SERVE_PACKAGES, require

RULE_HELP = (
    "How --positive picks its threshold on validation: sensitivity:X, specificity:X, youden, max-f1, cost:R, "
    "fixed:T (default sensitivity:0.95)."
)

RUN_OPTIONS = (
    "config",
    "name",
    "runs_dir",
    "force",
    "resume",
    "report",
    "explain",
    "dry_run",
    "pipeline",
    "config_from_flags",
)  # train's options that are not part of the run's config

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Train, evaluate and use CNN image classifiers. Start with: cnnlab train --data fashion-mnist",
)  # fmt: skip


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    """cnnlab: images in, a trained and evaluated CNN classifier out."""
    # `debug` is declared here for parsing and --help; `main` acts on it (see _wants_debug), because errors
    # are turned into one line outside the app.


def _log(message: str) -> None:
    typer.echo(message)


def _note(message: str) -> None:
    """Progress and warnings while output goes to stdout (predictions, answers): on stderr."""
    typer.echo(message, err=True)


@app.command()
def train(
    data: Optional[str] = typer.Option(None, help="digits | fashion-mnist | mnist | cifar10 | folder:PATH"),
    model: Optional[str] = typer.Option(None, help="auto (folders: chosen by measurement) or a `cnnlab models` name."),
    model_option: Optional[list[str]] = typer.Option(None, help="A model option KEY=VALUE, repeatable: widths=[32,64]"),
    strategy: Optional[str] = typer.Option(
        None, help="Pretrained backbones: auto | feature-extract | truncate | fine-tune | retrain (default auto)."
    ),
    weights: Optional[str] = typer.Option(None, help="Pretrained backbones: a local .pth/.safetensors state_dict."),
    feature_views: Optional[int] = typer.Option(None, help="Frozen strategies: augmented views cached per image (0)."),
    backbone_lr: Optional[float] = typer.Option(None, help="fine-tune: backbone lr as a fraction of --lr (0.1)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs to train (default 10)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (128; less for a small train split)."),
    lr: Optional[float] = typer.Option(None, help="(Peak) learning rate (default 0.003)."),
    optimizer: Optional[str] = typer.Option(None, help="sgd | adam | adamw (default adamw)."),
    schedule: Optional[str] = typer.Option(None, help="none | step | cosine | onecycle (default onecycle)."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay (default 5e-4)."),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum (default 0.9)."),
    label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing in [0, 1) (default 0)."),
    progressive: Optional[bool] = typer.Option(
        None, "--progressive/--no-progressive", help="Train the first 2/3 of epochs on smaller images (larger recipe)."
    ),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without valid-loss gain."),
    budget_minutes: Optional[float] = typer.Option(
        None, help="Train the epochs that fit in this many minutes; bounds a folder's model search (default 5)."
    ),
    valid_fraction: Optional[float] = typer.Option(None, help="Share of the training pool for validation (0.2)."),
    test_fraction: Optional[float] = typer.Option(None, help="Test share for sources without a test set (0.2)."),
    augment: Optional[str] = typer.Option(None, help="none | light | erase | standard (default light)."),
    flips: Optional[bool] = typer.Option(None, "--flips/--no-flips", help="Horizontal flips (default: from the data)."),
    image_size: Optional[int] = typer.Option(None, help="Image side in px (default: native / a folder's common size)."),
    train_limit: Optional[int] = typer.Option(None, help="Train on a stratified subset of this many images."),
    sample: Optional[float] = typer.Option(
        None,
        help="Folders: use this share of the files, by a hash of each path (default: all, or what the budget fits).",
    ),
    data_root: Optional[str] = typer.Option(None, help="Where datasets are found/downloaded (default data/)."),
    strict: Optional[bool] = typer.Option(None, "--strict/--skip-bad", help="Fail on an unreadable image."),
    stream: Optional[bool] = typer.Option(
        None,
        "--stream/--in-memory",
        help="Folders: read batches from the decoded cache on disk, or hold the images in memory (default: by size).",
    ),
    precision: Optional[str] = typer.Option(None, help="auto (bf16 if measured faster) | 32-true | bf16-mixed."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model (GPUs)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda."),
    logger: Optional[str] = typer.Option(None, help="csv (default) | tensorboard (also RUN/tensorboard/)."),
    devices: Optional[int] = typer.Option(None, help="Processes per node; > 1 trains with DDP (global --batch-size)."),
    num_nodes: Optional[int] = typer.Option(None, help="Nodes for multi-node DDP (launch with torchrun)."),
    seed: Optional[int] = typer.Option(None, help="Fixes splits, init and augmentation (default 0)."),
    config: Optional[Path] = typer.Option(None, help="YAML file with data/model/train sections; flags override it."),
    name: Optional[str] = typer.Option(None, help="Run folder name (default <data>-<model>-<time>)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders go."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run folder of the same name."),
    resume: Optional[Path] = typer.Option(None, help="Continue RUN_DIR from its last.pt (no other options)."),
    positive: Optional[str] = typer.Option(None, help="Also score CLASS vs the rest (ROC/AUC, thresholds)."),
    threshold_rule: Optional[str] = typer.Option(None, help=RULE_HELP),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="Average with mirror images at test time."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html at the end."),
    explain: bool = typer.Option(
        True, "--explain/--no-explain", help="The report's 'Inside the model' section (cnnlab explain, ~30 s)."
    ),
    audit: Optional[str] = typer.Option(None, help="auto (<= 30,000 images) | on | off: duplicates, leakage."),
    dedupe: Optional[bool] = typer.Option(None, "--dedupe/--no-dedupe", help="Drop valid/test copies of train images."),
    drop_degenerate: Optional[bool] = typer.Option(
        None, "--drop-degenerate/--keep-degenerate", help="Drop blank, striped, flat or blurred images (audit)."
    ),
    group_by: Optional[str] = typer.Option(
        None, help="Folders: REGEX finding each file's group (a patient) in its path; no group spans two splits."
    ),
    groups: Optional[str] = typer.Option(None, help="Folders: a CSV of file,group rows (instead of --group-by)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Train and score one batch; write nothing."),
) -> None:
    """Train a model, keep the best epoch by validation loss, and evaluate it on the test split."""
    flags = {k: v for k, v in locals().items() if k not in RUN_OPTIONS}  # the config's options, None if not given
    from cnnlab import pipeline
    from cnnlab.config import config_from_flags

    if resume is not None:
        given = [k for k, v in flags.items() if v is not None] + ["config"] * bool(config)
        if given or dry_run or name:
            raise CnnlabError(f"--resume continues the saved plan; drop {', '.join(given) or 'the other options'}")
        pipeline.resume(resume, log=_log)
        return
    cfg = config_from_flags(config, flags)
    pipeline.train(
        cfg, runs_dir=runs_dir, name=name, force=force, dry_run=dry_run, report=report, explain=explain, log=_log
    )


BACKEND_HELP = (
    "What runs the model: torch (BN folded, channels_last), onnx (ONNX Runtime; the file is built once per "
    "checkpoint into RUN/cache/), or auto: whichever is measured faster here and agrees with PyTorch."
)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run folder made by `cnnlab train`."),
    checkpoint: Optional[Path] = typer.Option(None, help="Score this checkpoint instead of RUN/best.pt."),
    positive: Optional[str] = typer.Option(
        None, help="Also score CLASS vs the rest (default: the run's own --positive, if it had one)."
    ),
    threshold_rule: Optional[str] = typer.Option(None, help=RULE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Score one batch; write nothing."),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
    skip_changed: bool = typer.Option(
        False, "--skip-changed", help="Score the recorded files still unchanged (else a gone/changed one is an error)."
    ),
    data: Optional[str] = typer.Option(
        None, help="Score every image of another labelled source (folder:NEW) instead of the run's test split."
    ),
    output: Optional[Path] = typer.Option(None, help="With --data: where results go (default RUN/eval-<name>/)."),
    force: bool = typer.Option(False, "--force", help="With --data: replace results already in --output."),
) -> None:
    """Score a run's best checkpoint on its test split (the files recorded at training); write predictions.csv and
    eval.json. With --data, score another labelled folder into its own folder instead."""
    from cnnlab.evaluate.evaluate import evaluate_other_data, evaluate_run

    if data is not None:
        if checkpoint or positive or threshold_rule or dry_run or skip_changed:
            raise CnnlabError("--data scores best.pt as the run was evaluated; drop the other options")
        evaluate_other_data(run, data, output=output, force=force, backend=backend, log=_log)
        return
    if output is not None or force:
        raise CnnlabError("--output and --force go with --data (the run's own evaluation is written into RUN)")
    evaluate_run(
        run, checkpoint=checkpoint, positive=positive, rule=threshold_rule, dry_run=dry_run, backend=backend,
        skip_changed=skip_changed, log=_log,
    )  # fmt: skip


@app.command()
def export(
    run: Path = typer.Argument(..., help="A run folder made by `cnnlab train`."),
    format: str = typer.Option(
        "onnx",
        "--format",
        help="onnx (ONNX opset 18 via torch.export, dynamic batch, metadata) | pt2 "
        "(torch.export's program, for ExecuTorch/AOTInductor; cnnlab itself reads only ONNX).",
    ),
    output: Optional[Path] = typer.Option(None, help="Where to write the file (default RUN/model.onnx or .pt2)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
    parity_images: Optional[int] = typer.Option(None, min=1, help="Test images for the parity check (default all)."),
    tta: Optional[bool] = typer.Option(
        None, "--tta/--no-tta", help="Test-time flips inside the graph (default: as the run was evaluated)."
    ),
    int8: bool = typer.Option(False, "--int8", help="Static int8 quantisation (ONNX Runtime), calibrated on valid."),
    calibration: int = typer.Option(500, min=1, help="--int8: validation images for the activation ranges."),
) -> None:
    """Export a run's best checkpoint (ONNX or torch.export) after checking it predicts as PyTorch does; writes
    RUN/export.json."""
    from cnnlab.export import export_run

    export_run(
        run, fmt=format, output=output, force=force, parity_images=parity_images, int8=int8,
        calibration=calibration, tta=tta, log=_log,
    )  # fmt: skip


@app.command()
def explain(
    paths: list[Path] = typer.Argument(..., help="RUN (a run folder), then optional image files/folders."),
    output: Optional[Path] = typer.Option(None, help="Folder for the pictures and explain.json (default RUN/explain)."),
    method: Optional[list[str]] = typer.Option(None, help="saliency|smoothgrad|integrated_gradients|gradcam|occlusion"),
    layer: Optional[list[str]] = typer.Option(None, help="Layer for feature_maps.png; repeatable (--list-layers)."),
    list_layers: bool = typer.Option(False, "--list-layers", help="Print the layers with feature maps and stop."),
    embedding: str = typer.Option("tsne", help="tsne | pca: the 2-D map of the penultimate features."),
    embed_samples: int = typer.Option(3000, min=5, help="Test images in the embedding (stratified)."),
    deletion_images: Optional[int] = typer.Option(
        None, min=1, help="Images in the deletion test (default 200 up to 64 px, else 24)."
    ),
    ig_steps: Optional[int] = typer.Option(None, min=2, help="Integrated-gradients steps (32; 16 above 64 px)."),
    occlusion_window: Optional[int] = typer.Option(None, min=1, help="Occlusion window in pixels (default size/7)."),
    occlusion_stride: Optional[int] = typer.Option(None, min=1, help="Occlusion stride (default the window)."),
    deletion_fill: str = typer.Option("mean", help="mean | blur: what removed squares become in the deletion test."),
    force: bool = typer.Option(False, "--force", help="Write into an --output folder that holds other files."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build everything for one image; write nothing."),
) -> None:
    """What a trained run has learned: first-layer filters, feature maps, attributions (captum) with a deletion
    test saying which map to trust, and a t-SNE of the penultimate features."""
    from cnnlab.explain.run import ExplainOptions, explain_run

    options = ExplainOptions(
        methods=method, layers=layer, embedding=embedding, embed_samples=embed_samples,
        deletion_images=deletion_images, ig_steps=ig_steps, occlusion_window=occlusion_window,
        occlusion_stride=occlusion_stride, deletion_fill=deletion_fill,
    )  # fmt: skip
    explain_run(
        paths[0], paths[1:] or None, output=output, options=options, list_layers=list_layers, dry_run=dry_run,
        force=force, log=_log,
    )  # fmt: skip


@app.command()
def dogapp(
    images: Optional[list[Path]] = typer.Argument(None, help="Image files or folders (any size or mode)."),
    breeds: Optional[Path] = typer.Option(None, help="A run trained on a breed folder (default: ImageNet's breeds)."),
    output: Optional[Path] = typer.Option(None, help="Also write each image annotated with its answer here."),
    force: bool = typer.Option(False, "--force", help="Overwrite annotated images already in --output."),
    assess: bool = typer.Option(False, "--assess", help="Measure the detectors on offline data (LFW, photos)."),
    assess_dogs: Optional[Path] = typer.Option(None, help="With --assess: a folder of your dog photos too."),
    face_scale: float = typer.Option(1.1, min=1.01, help="Haar cascade scaleFactor."),
    face_neighbors: int = typer.Option(3, min=0, help="Haar cascade minNeighbors (higher: fewer false faces)."),
    face_min_size: int = typer.Option(20, min=4, help="Smallest face in pixels (after small images are upscaled)."),
) -> None:
    """The course's dog-breed app: a dog (which breed), a human (which breed they resemble), or neither."""
    from cnnlab.apps.dogapp import FaceSettings, run_dogapp

    faces = FaceSettings(scale_factor=face_scale, min_neighbors=face_neighbors, min_size=face_min_size)
    run_dogapp(images, breeds=breeds, output=output, force=force, assess_detectors=assess, assess_dogs=assess_dogs,
               faces=faces, log=_log, note=_note)  # fmt: skip


@app.command()
def autoencode(
    data: str = typer.Option("fashion-mnist", help="digits | fashion-mnist | mnist | cifar10 | folder:PATH"),
    model: str = typer.Option("conv-upsample", help="linear | conv (transposed-conv decoder) | conv-upsample."),
    latent: int = typer.Option(32, min=1, help="Size of the bottleneck."),
    noise: float = typer.Option(0.0, help="> 0: denoising (Gaussian noise of this std on the 0..1 scale, clipped)."),
    loss: str = typer.Option("mse", help="mse | bce."),
    epochs: int = typer.Option(10, min=1, help="Epochs (best.pt: the lowest valid reconstruction loss)."),
    batch_size: int = typer.Option(128, min=1, help="Batch size."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    seed: int = typer.Option(0, help="Fixes splits, init, noise and batch order."),
    budget_minutes: Optional[float] = typer.Option(None, help="Stop after the epoch that passes this many minutes."),
    anomaly: Optional[str] = typer.Option(None, help="Held-out class or other source: reconstruction-error AUC."),
    image_size: Optional[int] = typer.Option(None, help="Folders: decode at this size."),
    train_limit: Optional[int] = typer.Option(None, help="Train on a stratified subset of this many images."),
    data_root: str = typer.Option("data", help="Where datasets and caches live."),
    name: Optional[str] = typer.Option(None, help="Run folder name."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders go."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run folder (or --output picture)."),
    compare: Optional[list[Path]] = typer.Option(None, help="RUN (twice or more): same test images through each."),
    output: Path = typer.Option(Path("autoencoders.png"), help="With --compare: the picture to write."),
    resume: Optional[Path] = typer.Option(None, help="Continue RUN from its last.pt (no other options)."),
) -> None:
    """Train an autoencoder (linear, conv, conv-upsample; --noise: denoising) and score reconstructions on the
    test split: MSE, PSNR, SSIM, and with --anomaly the ROC AUC of reconstruction error as an outlier score."""
    from cnnlab.apps.autoencode import AutoencodeOptions, autoencode_command

    options = AutoencodeOptions(
        data=data, model=model, latent=latent, noise=noise, loss=loss, epochs=epochs, batch_size=batch_size, lr=lr,
        seed=seed, budget_minutes=budget_minutes, anomaly=anomaly, image_size=image_size, data_root=data_root,
        train_limit=train_limit,
    )  # fmt: skip
    autoencode_command(options, runs_dir=runs_dir, name=name, force=force, compare_runs=compare, output=output,
                       resume_run=resume, log=_log)  # fmt: skip


@app.command()
def stylize(
    content: Optional[Path] = typer.Argument(None, help="The photo whose content is kept."),
    style: Optional[Path] = typer.Argument(None, help="The image whose style (textures, colours) is taken."),
    demo: bool = typer.Option(False, "--demo", help="scikit-image's astronaut in the style of its stained tissue."),
    output: Path = typer.Option(Path("stylized.png"), help="The image; OUTPUT.loss.png and OUTPUT.json beside it."),
    size: int = typer.Option(256, help="The output's longer side in px."),
    steps: int = typer.Option(300, help="Optimiser steps."),
    network: str = typer.Option("efficientnet_lite0", help="efficientnet_lite0 (offline) | vgg19 (ImageNet weights)."),
    weights: Optional[str] = typer.Option(None, help="A state_dict file for the network (e.g. vgg19-dcbb9e9d.pth)."),
    smoothing: str = typer.Option("none", help="none | softmax (activation smoothing after Wang et al. 2021)."),
    optimizer: str = typer.Option("adam", help="adam | lbfgs."),
    lr: float = typer.Option(0.02, help="Adam's step on pixels in 0..1."),
    content_weight: float = typer.Option(1.0, help="Weight of the content loss."),
    style_weight: float = typer.Option(1e3, help="Weight of the style loss (the content/style ratio sets the look)."),
    tv_weight: float = typer.Option(1e-2, help="Weight of the total-variation (smoothness) loss."),
    init: str = typer.Option("content", help="content | noise: the starting image."),
    seed: int = typer.Option(0, help="Fixes the noise start and the run."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUTPUT and its companions."),
) -> None:
    """Neural style transfer (Gatys et al.): content loss on one deep layer, Gram-matrix style losses on several,
    total variation; writes the image, its loss curve and a JSON record."""
    from cnnlab.apps.style import StyleOptions, stylize_files

    options = StyleOptions(size=size, steps=steps, network=network, weights=weights, smoothing=smoothing,
                           optimizer=optimizer, lr=lr, content_weight=content_weight, style_weight=style_weight,
                           tv_weight=tv_weight, init=init, seed=seed)  # fmt: skip
    stylize_files(content, style, options, demo=demo, output=output, force=force, log=_log)


@app.command("audit")
def audit_command(
    run: Optional[Path] = typer.Argument(None, help="A run folder: audit its data with the splits it trained on."),
    data: Optional[str] = typer.Option(None, help="Or a data source: digits | fashion-mnist | ... | folder:PATH"),
    output: Optional[Path] = typer.Option(None, help="Where audit.csv/.json go (default runs/audit-<data>)."),
    force: bool = typer.Option(False, "--force", help="Replace audit files already in --output."),
    labels: bool = typer.Option(
        True, "--labels/--no-labels", help="Also likely label errors and outliers (one backbone pass, cached)."
    ),
    image_size: Optional[int] = typer.Option(None, help="Folders: decode at this size (default: as train would)."),
    valid_fraction: Optional[float] = typer.Option(None, help="As for train: the splits audited."),
    test_fraction: Optional[float] = typer.Option(None, help="As for train: the splits audited."),
    seed: Optional[int] = typer.Option(None, help="As for train: the splits audited."),
    group_by: Optional[str] = typer.Option(None, help="As for train: each file's group (REGEX on its path)."),
    groups: Optional[str] = typer.Option(None, help="As for train: a CSV of file,group rows."),
    data_root: Optional[str] = typer.Option(None, help="Where datasets and caches live (default data/)."),
) -> None:
    """Duplicates and leakage across train/valid/test, likely label errors, outliers and class balance: a ranked
    table, audit.csv and audit.json. Never changes or deletes an image."""
    from cnnlab.audit.gate import audit_command as run_audit
    from cnnlab.config import RunConfig, with_overrides

    cfg = None
    if data is not None:
        cfg = with_overrides(RunConfig(), "data", source=data, image_size=image_size, valid_fraction=valid_fraction,
                             test_fraction=test_fraction, root=data_root, group_by=group_by,
                             groups=groups)  # fmt: skip
        cfg = with_overrides(cfg, "train", seed=seed)
    run_audit(run, cfg, output=output, force=force, labels=labels, log=_log)


@app.command()
def serve(
    target: str = typer.Argument(..., help="A run folder, an exported .onnx file, or a pretrained backbone name."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (another than loopback exposes the page)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port (0: any free one, printed)."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", min=0.01, help="Largest upload; more gets 413."),
    max_megapixels: float = typer.Option(89.0, "--max-megapixels", min=0.01, help="Largest image, by its header."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Classes shown per image."),
    dogapp: bool = typer.Option(False, "--dogapp", help="Add the dog app's answer (on for a pretrained backbone)."),
    weights: Optional[str] = typer.Option(None, help="Weights file for a pretrained backbone name."),
) -> None:
    """A web page (and POST /predict JSON) to try a model on an image: top classes as bars, the Grad-CAM overlay
    and, for an ImageNet backbone or --dogapp, the dog app's answer."""
    require(*SERVE_PACKAGES, purpose="cnnlab serve")
    from cnnlab.apps.serve import serve_target  # its FastAPI imports need the extra checked above

    serve_target(target, host=host, port=port, max_upload_mb=max_upload_mb, max_megapixels=max_megapixels,
                 top_k=top_k, dogapp=dogapp, weights=weights, log=_log)  # fmt: skip


@app.command()
def benchmark(
    run: Path = typer.Argument(..., help="A run folder made by `cnnlab train`."),
    threads: Optional[int] = typer.Option(None, min=1, help="Threads for PyTorch and ONNX Runtime (a smaller device)."),
    latency_budget: Optional[float] = typer.Option(
        None,
        "--latency-budget",
        min=0.0,
        help="MS: say which backends meet it at p95, batch 1; exit 1 if the default prediction backend misses it.",
    ),
) -> None:
    """Latency (batch 1, p50/p95) and throughput (batch 64) of a run's model per backend: eager PyTorch, BN-folded
    PyTorch, ONNX Runtime fp32 and int8 (when exported); writes RUN/benchmark.json."""
    from cnnlab.export.benchmark import benchmark_run, meets_latency_budget

    result = benchmark_run(run, threads=threads, latency_budget_ms=latency_budget, log=_log)
    if not meets_latency_budget(result, log=_note):
        raise typer.Exit(1)


@app.command()
def predict(
    paths: list[Path] = typer.Argument(
        ..., help="RUN (a run folder or checkpoint .pt) then image files/folders; with --model, images only."
    ),
    model: Optional[str] = typer.Option(
        None, help="A pretrained backbone (e.g. efficientnet_lite0): ImageNet classes, no training, no RUN."
    ),
    weights: Optional[str] = typer.Option(None, help="With --model: a local state_dict file for the backbone."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Classes to show per image."),
    output: Optional[Path] = typer.Option(None, help="Also write a CSV: path, predicted, one column per class."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Predict the first image only; write nothing."),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
) -> None:
    """Classify image files with a trained model (RUN, its checkpoint, or a file made by `cnnlab export`: then
    ONNX Runtime alone, no torch), preprocessed as its training data was, or with a pretrained backbone's
    ImageNet classifier (--model)."""
    from cnnlab.predict.paths import predict_paths

    predict_paths(paths, model=model, weights=weights, top_k=top_k, output=output, force=force, dry_run=dry_run,
                  backend=backend, log=_log, note=_note)  # fmt: skip


@app.command()
def report(
    run: Path = typer.Argument(..., help="A run folder that has been evaluated."),
    positive: Optional[str] = typer.Option(None, help="Add the ROC/threshold section for CLASS vs the rest."),
    threshold_rule: Optional[str] = typer.Option(None, help=RULE_HELP),
    readers: Optional[Path] = typer.Option(None, help="CSV name,sensitivity,specificity drawn on the ROC plot."),
    explain: bool = typer.Option(
        True, "--explain/--no-explain", help="Build the 'Inside the model' section (cnnlab explain, ~30 s)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the inputs; write nothing."),
) -> None:
    """Write RUN/report.html: one self-contained page with every figure embedded. With --positive or
    --threshold-rule, eval.json's binary block is recomputed first from the saved predictions."""
    from cnnlab.pipeline import report_run

    path = report_run(run, positive=positive, rule=threshold_rule, readers=readers, explain=explain,
                      dry_run=dry_run, log=_log)  # fmt: skip
    if path is not None:
        _log(f"wrote {path}")


@app.command()
def score(
    predictions: Path = typer.Argument(..., help="CSV of predictions: id + scores, or ISIC Id,task_1,task_2."),
    truth: Optional[Path] = typer.Option(None, help="CSV of true labels (id,label or ISIC layout)."),
    positive: Optional[str] = typer.Option(None, help="The positive class, for binary metrics."),
    threshold: Optional[float] = typer.Option(None, help="Decision threshold in [0, 1] (default 0.5)."),
    output: Optional[Path] = typer.Option(None, help="Also write the results as JSON."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Same checks and output; writes nothing."),
) -> None:
    """Score predictions made elsewhere (generic or ISIC-2017 / dermatologist-ai layout)."""
    from cnnlab.evaluate.score import score_command

    score_command(predictions, truth=truth, positive=positive, threshold=threshold, output=output, dry_run=dry_run,
                  log=_log)  # fmt: skip


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Two or more run folders."),
    output: Path = typer.Option(Path("compare.html"), help="Where to write the comparison page."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the table only; write nothing."),
) -> None:
    """Put runs side by side: parameters, recipe, best valid loss, test accuracy, time, speed, curves."""
    from cnnlab.report.compare import compare_runs

    compare_runs(runs, output, force=force, dry_run=dry_run, log=_log)


@app.command()
def layers(
    model: str = typer.Argument(..., help="A registered model name (see `cnnlab models`)."),
    input: str = typer.Option("1x28x28", "--input", help="Input size CxHxW, e.g. 3x32x32."),
    classes: int = typer.Option(10, help="Number of classes of the head."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Same output (nothing is written anyway)."),
) -> None:
    """Conv arithmetic per layer from the formulas (size, parameters, receptive field, MACs), checked
    against a real forward pass."""
    from cnnlab.lab.layers import layers_report

    _log(layers_report(model, input_shape=input, classes=classes))


@app.command()
def filters(
    image: Optional[Path] = typer.Argument(None, help="An image file (default: a bundled sample photo)."),
    kernel: Optional[list[str]] = typer.Option(None, help="sobel-x/y, laplacian, sharpen, box, gaussian, [[..]]."),
    output: Path = typer.Option(Path("filters.png"), help="Figure to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the inputs; write nothing."),
) -> None:
    """Apply high-pass and low-pass kernels with OpenCV and with conv2d; plot images and spectra."""
    from cnnlab.lab.filters import filters_command

    filters_command(image, kernel, output, force=force, dry_run=dry_run, log=_log)


@app.command("init-compare")
def init_compare(
    data: str = typer.Option("fashion-mnist", help="Data source (see `cnnlab train --help`)."),
    model: str = typer.Option("mlp", help="Model to initialise and train."),
    epochs: int = typer.Option(2, help="Epochs per scheme."),
    lr: float = typer.Option(0.01, help="SGD learning rate (momentum 0.9, constant)."),
    batch_size: int = typer.Option(128, help="Images per step."),
    scheme: Optional[list[str]] = typer.Option(None, help="Schemes to compare (default: all), repeatable."),
    seed: int = typer.Option(0, help="Same seed, init stream and batch order for every scheme."),
    output: Path = typer.Option(Path("init_compare.png"), help="Figure of the training-loss curves."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output."),
    dry_run: bool = typer.Option(False, "--dry-run", help="One batch per scheme; write nothing."),
) -> None:
    """Train the same model once per weight-init scheme and compare the losses (the course's lesson)."""
    from cnnlab.lab.init import init_compare_command

    init_compare_command(data, model, schemes=scheme, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                         output=output, force=force, dry_run=dry_run, log=_log)  # fmt: skip


@app.command("sample-data")
def sample_data(
    name: str = typer.Argument(..., help="lfw (100 faces / 100 non-faces, scikit-image) | fashion (Fashion-MNIST)"),
    dest: Path = typer.Argument(..., help="A new folder to write DEST/{train,valid,test}/<class>/*.png into."),
    per_class: int = typer.Option(60, help="fashion: images per class."),
    seed: int = typer.Option(0, help="Fixes the subset and the split."),
) -> None:
    """Write a small real image-folder dataset from data that ships with installed packages (offline)."""
    from cnnlab.data.samples import write_sample_folder

    counts = write_sample_folder(name, dest, per_class=per_class, seed=seed)
    typer.echo(f"wrote {dest}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" (use --data folder:{dest})")


@app.command()
def models(
    image_size: int = typer.Option(28, help="Input side used to count parameters."),
    in_channels: int = typer.Option(1, help="Input channels used to count parameters."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Same output (nothing is written anyway)."),
) -> None:
    """List the registered models with parameter counts for 10 classes."""
    from cnnlab.models.registry import catalogue

    _log(catalogue(image_size=image_size, in_channels=in_channels))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning CnnlabError into one line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    return_freed_memory()  # large data: memory stays flat batch after batch
    try:
        app(args=args, prog_name="cnnlab", standalone_mode=True)
    except CnnlabError as exc:
        if _wants_debug(args):
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:  # a file the library did not write through cnnlab.files: still one line
        if _wants_debug(args):
            raise
        typer.echo(f"error: {exc.strerror or exc}: {exc.filename or ''} (check the path and free space)", err=True)
        sys.exit(2)


def _wants_debug(args: list[str]) -> bool:
    """`--debug` among the root options, i.e. before the command name (`cnnlab --debug train ...`); a value
    that happens to read `--debug` after the command does not count."""
    for arg in args:
        if not arg.startswith("-"):
            return False
        if arg == "--debug":
            return True
    return False


if __name__ == "__main__":
    main()
