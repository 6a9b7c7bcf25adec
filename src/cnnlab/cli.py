"""`cnnlab` command line: thin Typer commands that build a config and call the Python API.

Errors a user can fix print one line `error: <what> (<how to fix>)` and exit 2; `--debug` shows tracebacks.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Optional

import typer

from cnnlab.errors import CnnlabError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Train, evaluate and use CNN image classifiers. Start with: cnnlab train --data fashion-mnist",
)  # fmt: skip


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    """cnnlab: images in, a trained and evaluated CNN classifier out."""


def _log(message: str) -> None:
    typer.echo(message)


@app.command()
def train(
    data: Optional[str] = typer.Option(None, help="digits | fashion-mnist | mnist | cifar10 | folder:PATH"),
    model: Optional[str] = typer.Option(None, help="Model name (see `cnnlab models`); default simple_cnn_bn."),
    epochs: Optional[int] = typer.Option(None, help="Epochs to train (default 10)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (default 128)."),
    lr: Optional[float] = typer.Option(None, help="(Peak) learning rate (default 0.003)."),
    optimizer: Optional[str] = typer.Option(None, help="sgd | adam | adamw (default adamw)."),
    schedule: Optional[str] = typer.Option(None, help="none | step | cosine | onecycle (default onecycle)."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay (default 5e-4)."),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum (default 0.9)."),
    label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing in [0, 1) (default 0)."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without valid-loss gain."),
    valid_fraction: Optional[float] = typer.Option(None, help="Share of the training pool for validation (0.2)."),
    test_fraction: Optional[float] = typer.Option(None, help="Test share for sources without a test set (0.2)."),
    augment: Optional[str] = typer.Option(None, help="none | light | standard (default light)."),
    image_size: Optional[int] = typer.Option(None, help="Resize images to this side in pixels."),
    train_limit: Optional[int] = typer.Option(None, help="Train on a stratified subset of this many images."),
    data_root: Optional[str] = typer.Option(None, help="Where datasets are found/downloaded (default data/)."),
    strict: Optional[bool] = typer.Option(None, "--strict/--skip-bad", help="Fail on an unreadable image."),
    precision: Optional[str] = typer.Option(None, help="auto | 32-true | bf16-mixed."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda."),
    seed: Optional[int] = typer.Option(None, help="Fixes splits, init and augmentation (default 0)."),
    config: Optional[Path] = typer.Option(None, help="YAML file with data/model/train sections; flags override it."),
    name: Optional[str] = typer.Option(None, help="Run folder name (default <data>-<model>-<time>)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders go."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run folder of the same name."),
    resume: Optional[Path] = typer.Option(None, help="Continue RUN_DIR from its last.pt (no other options)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Train and score one batch; write nothing."),
) -> None:
    """Train a model, keep the best epoch by validation loss, and evaluate it on the test split."""
    from cnnlab import pipeline
    from cnnlab.config import RunConfig, load_config, with_overrides

    data_flags = {
        "source": data, "valid_fraction": valid_fraction, "test_fraction": test_fraction, "augment": augment,
        "image_size": image_size, "train_limit": train_limit, "root": data_root, "strict": strict,
    }  # fmt: skip
    train_flags = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "schedule": schedule,
        "weight_decay": weight_decay, "momentum": momentum, "label_smoothing": label_smoothing,
        "patience": patience, "precision": precision, "device": device, "seed": seed,
    }  # fmt: skip
    if resume is not None:
        given = [k for k, v in {**data_flags, **train_flags, "model": model, "config": config}.items() if v is not None]
        if given or dry_run or name:
            raise CnnlabError(f"--resume continues the saved plan; drop {', '.join(given) or 'the other options'}")
        pipeline.resume(resume, log=_log)
        return
    cfg = load_config(config) if config else RunConfig()
    cfg = with_overrides(cfg, "data", **data_flags)
    cfg = with_overrides(cfg, "model", name=model)
    cfg = with_overrides(cfg, "train", **train_flags)
    pipeline.train(cfg, runs_dir=runs_dir, name=name, force=force, dry_run=dry_run, log=_log)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run folder made by `cnnlab train`."),
    checkpoint: Optional[Path] = typer.Option(None, help="Score this checkpoint instead of RUN/best.pt."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Score one batch; write nothing."),
) -> None:
    """Score a run's best checkpoint on its test split; write predictions.csv and eval.json."""
    from cnnlab.evaluate.evaluate import evaluate_run

    evaluate_run(run, checkpoint=checkpoint, dry_run=dry_run, log=_log)


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run folder (uses best.pt) or a checkpoint .pt file."),
    images: list[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Classes to show per image."),
    output: Optional[Path] = typer.Option(None, help="Also write a CSV: path, predicted, one column per class."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Predict the first image only; write nothing."),
) -> None:
    """Classify image files with a trained model, preprocessed as its training data was."""
    from cnnlab.evaluate.predict import predict_images

    ckpt = run / "best.pt" if run.is_dir() else run
    if output is not None and output.exists() and not force and not dry_run:
        raise CnnlabError(f"{output} already exists (choose another --output or pass --force)")
    classes, preds = predict_images(ckpt, images, limit=1 if dry_run else None)
    for p in preds:
        order = p.probabilities.argsort()[::-1][:top_k]
        typer.echo(f"{p.path}: " + ", ".join(f"{classes[k]} {100 * p.probabilities[k]:.1f}%" for k in order))
    if output is not None and not dry_run:
        _write_prediction_csv(output, classes, preds)
        typer.echo(f"wrote {output}")


def _write_prediction_csv(path: Path, classes: list[str], preds) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "predicted", *[f"p_{c}" for c in classes]])
        for p in preds:
            writer.writerow([p.path, classes[int(p.probabilities.argmax())], *[f"{v:.6f}" for v in p.probabilities]])
    tmp.replace(path)


@app.command()
def models(
    image_size: int = typer.Option(28, help="Input side used to count parameters."),
    in_channels: int = typer.Option(1, help="Input channels used to count parameters."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Same output (nothing is written anyway)."),
) -> None:
    """List the registered models with parameter counts for 10 classes."""
    from cnnlab.models import create_model, describe_model, list_models

    typer.echo(f"{'model':<16}{'params':>12}  description (at {in_channels}x{image_size}x{image_size}, 10 classes)")
    for model_name in list_models():
        entry = describe_model(model_name)
        try:
            net = create_model(model_name, num_classes=10, in_channels=in_channels, image_size=image_size)
            count = f"{sum(p.numel() for p in net.parameters()):,}"
        except CnnlabError:
            count = f"needs >={entry.min_size}px"
        typer.echo(f"{model_name:<16}{count:>12}  {entry.summary}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning CnnlabError into one line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=args, prog_name="cnnlab", standalone_mode=True)
    except CnnlabError as exc:
        if "--debug" in args:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
