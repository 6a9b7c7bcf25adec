"""The notebook-first Python API: `cnnlab.train(...)` returns a `Run`; `cnnlab.load("runs/NAME")` opens one.

    import cnnlab
    run = cnnlab.train("photos/", budget_minutes=2)
    run.predict(["a.jpg", "b.jpg"]); run.plot_confusion_matrix()

`train` takes the CLI's options as keyword arguments (a test keeps the two lists equal) and goes through the same
config validation, so a wrong value is the same one-line error. A `Run` is a run folder: everything it shows is read
from the files `cnnlab train` wrote, and `predict` gives exactly what `cnnlab predict RUN` gives (the run's test-time
flips and prediction backend included). In a Jupyter kernel, epochs print as they finish, figures show inline and a
cnnlab error shows as its one line instead of a traceback.
"""

from __future__ import annotations

import base64
import html
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cnnlab.audit.gate import audit_command, audit_run
from cnnlab.config import RunConfig, config_from_flags
from cnnlab.data.samples import write_sample_folder
from cnnlab.data.sources import load_source
from cnnlab.data.user_dataset import register_dataset
from cnnlab.errors import CnnlabError
from cnnlab.evaluate import metrics as M
from cnnlab.evaluate import plots
from cnnlab.evaluate.analysis import PredictionTable, read_predictions
from cnnlab.evaluate.evaluate import evaluate_run
from cnnlab.evaluate.summary import Evaluation
from cnnlab.explain.run import ExplainOptions, explain_run
from cnnlab.export import export_run
from cnnlab.extras import SERVE_PACKAGES, require
from cnnlab.figures import figure_png_base64
from cnnlab.files import read_json, write_json_atomic
from cnnlab.models.base import Classifier
from cnnlab.models.checkpoint import load_checkpoint
from cnnlab.pipeline import report_run
from cnnlab.pipeline import train as train_pipeline
from cnnlab.predict.infer import ImagePrediction, model_from_checkpoint, predict_images, predict_pictures
from cnnlab.predict.paths import format_predictions
from cnnlab.report.html import prediction_grid, read_metrics, top_losses
from cnnlab.runs import RunFile, open_run, recorded_tta

NAMED_SOURCES = ("digits", "fashion-mnist", "mnist", "cifar10")
PICTURE_TYPES = (Image.Image, np.ndarray, torch.Tensor)


def train(
    data: str | Path | torch.utils.data.Dataset = "fashion-mnist",
    *,
    class_names: Sequence[str] | None = None,
    model: str | None = None,
    model_options: dict[str, Any] | None = None,
    strategy: str | None = None,
    weights: str | None = None,
    feature_views: int | None = None,
    backbone_lr: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    schedule: str | None = None,
    weight_decay: float | None = None,
    momentum: float | None = None,
    label_smoothing: float | None = None,
    progressive: bool | None = None,
    patience: int | None = None,
    budget_minutes: float | None = None,
    valid_fraction: float | None = None,
    test_fraction: float | None = None,
    augment: str | None = None,
    flips: bool | None = None,
    image_size: int | None = None,
    train_limit: int | None = None,
    sample: float | None = None,
    data_root: str | None = None,
    strict: bool | None = None,
    stream: bool | None = None,
    precision: str | None = None,
    compile: bool | None = None,
    device: str | None = None,
    logger: str | None = None,
    devices: int | None = None,
    num_nodes: int | None = None,
    seed: int | None = None,
    positive: str | None = None,
    threshold_rule: str | None = None,
    tta: bool | None = None,
    audit: str | None = None,
    dedupe: bool | None = None,
    drop_degenerate: bool | None = None,
    group_by: str | None = None,
    groups: str | None = None,
    config: str | Path | None = None,
    name: str | None = None,
    runs_dir: str | Path = "runs",
    force: bool = False,
    report: bool = True,
    explain: bool = True,
    dry_run: bool = False,
    verbose: bool = True,
) -> Run | None:
    """Train on `data` as `cnnlab train --data ...` does and return the `Run` (None for a `dry_run`).

    `data`: a named dataset ("fashion-mnist", "digits", "mnist", "cifar10"), a folder ("photos/" or a Path; same as
    "folder:photos/"), or a map-style `torch.utils.data.Dataset` of (image, label) with `class_names` (default: its
    `classes`). Every other keyword is the CLI flag of the same name (`cnnlab train --help`); `model_options` is
    `--model-option` as a dict; None leaves the default (most are decided from the data). `verbose=False` prints
    nothing."""
    _notebook_setup()
    options = {k: v for k, v in locals().items() if k not in _RUN_ARGUMENTS}
    options["model_option"] = options.pop("model_options")
    options["data"] = _source(data, class_names)
    cfg = config_from_flags(config, options)
    result = train_pipeline(cfg, runs_dir=Path(runs_dir), name=name, force=force, dry_run=dry_run, report=report,
                            explain=explain, log=print if verbose else _silent)  # fmt: skip
    if result.run_dir is None:
        return None
    run = Run(result.run_dir)
    if verbose:
        _show(run)  # in a notebook: the run's summary, curves and confusion matrix below the epochs
    return run


_RUN_ARGUMENTS = {"class_names", "config", "name", "runs_dir", "force", "report", "explain", "dry_run", "verbose"}


def sample_data(name: str = "fashion", dest: str | Path | None = None, *, per_class: int = 60, seed: int = 0) -> Path:
    """A small real image folder (`cnnlab sample-data`) to try things on offline, written once and then reused (as
    fastai's untar_data is): "fashion" (Fashion-MNIST, `per_class` per class, 28 px) or "lfw" (100 faces, 100
    non-faces). `dest` defaults to data/samples/NAME-PER_CLASS-SEED. Returns the folder."""
    default = f"{name}-{per_class}-{seed}" if name == "fashion" else f"{name}-{seed}"  # lfw: all 200 crops
    dest = Path(dest) if dest is not None else Path("data") / "samples" / default
    marker = dest / SAMPLE_MARKER
    wanted = {"name": name, "per_class": per_class, "seed": seed}
    if marker.is_file() and read_json(marker, missing="") == wanted:
        return dest
    if dest.exists() and any(dest.iterdir()):
        raise CnnlabError(f"{dest} already exists and is not empty (choose a new folder; nothing was written)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:  # whole or not at all; one file system for the rename
        write_sample_folder(name, Path(tmp) / "folder", per_class=per_class, seed=seed)
        write_json_atomic(Path(tmp) / "folder" / SAMPLE_MARKER, wanted)
        os.replace(Path(tmp) / "folder", dest)
    return dest


SAMPLE_MARKER = ".cnnlab-sample.json"  # what sample_data wrote there (not an image: folders ignore it)


def audit_data(
    data: str | Path | torch.utils.data.Dataset, *, class_names: Sequence[str] | None = None,
    output: str | Path | None = None, force: bool = False, labels: bool = True, image_size: int | None = None,
    valid_fraction: float | None = None, test_fraction: float | None = None, seed: int | None = None,
    group_by: str | None = None, groups: str | None = None, data_root: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`cnnlab audit --data ...`: duplicates and leakage across the splits `train` would make, likely label errors,
    outliers and class balance, printed as a ranked table and written to `output` (default runs/audit-<data>).
    Never changes or deletes an image."""
    _notebook_setup()
    cfg = config_from_flags(None, {"data": _source(data, class_names), "image_size": image_size,
                                   "valid_fraction": valid_fraction, "test_fraction": test_fraction, "seed": seed,
                                   "group_by": group_by, "groups": groups, "data_root": data_root})  # fmt: skip
    return audit_command(None, cfg, output=Path(output) if output else None, force=force, labels=labels, log=print)


def load(path: str | Path) -> Run:
    """The run folder at `path` (made by `cnnlab train` or `cnnlab.train`), checked to be one."""
    _notebook_setup()
    open_run(Path(path))
    return Run(Path(path))


@dataclass(frozen=True)
class Predictions:
    """Class probabilities for some images, in the order given."""

    class_names: list[str]
    names: list[str]  # each image's path, or "image K" for one given in memory
    probabilities: np.ndarray  # [images, classes]

    @property
    def predicted(self) -> list[str]:
        """The most probable class of each image."""
        return [self.class_names[k] for k in self.probabilities.argmax(1)]

    def __len__(self) -> int:
        return len(self.names)

    def lines(self, top_k: int = 3) -> list[str]:
        """`name: class 97.1%, class 2.0%, ...` per image, as `cnnlab predict` prints them."""
        preds = [ImagePrediction(n, p) for n, p in zip(self.names, self.probabilities, strict=True)]
        return format_predictions(self.class_names, preds, top_k)

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_json_(self) -> dict[str, Any]:
        """The probabilities at full precision beside the table (a notebook keeps both; tests read this one)."""
        return {"class_names": self.class_names, "names": self.names, "probabilities": self.probabilities.tolist()}

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td><b>{html.escape(line.split(': ', 1)[1])}</b></td></tr>"
            for n, line in zip(self.names, self.lines(), strict=True)
        )
        return f"<table><tr><th>image</th><th>top classes</th></tr>{rows}</table>"


class Run:
    """A trained run folder: its config, evaluation and model, and what can be done with them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        ev = self.evaluation
        return f"Run('{self.path}')" + (f": {ev.headline()}" if ev is not None else " (not evaluated)")

    @property
    def config(self) -> RunConfig:
        """config.yaml: every option, each `auto` replaced by what was decided, and `decisions` saying why."""
        return open_run(self.path)

    @property
    def evaluation(self) -> Evaluation | None:
        """eval.json, typed; None before the run is evaluated."""
        path = self.path / RunFile.EVAL
        return Evaluation.from_dict(read_json(path, missing="evaluate the run")) if path.is_file() else None

    @property
    def history(self) -> list[dict[str, float]]:
        """metrics.csv: one row per epoch (train/valid loss and accuracy, lr, seconds)."""
        return [{k: float(v) for k, v in row.items()} for row in read_metrics(self.path)]

    @property
    def class_names(self) -> list[str]:
        return list(self._checkpoint.class_names)

    @cached_property
    def model(self) -> Classifier:
        """best.pt's model (a torch.nn.Module, eval mode, CPU)."""
        return model_from_checkpoint(self._checkpoint, self.path / RunFile.BEST)

    @cached_property
    def _checkpoint(self):
        path = self.path / RunFile.BEST
        if not path.is_file():
            raise CnnlabError(f"{path} is missing (train the run first, or resume it: cnnlab train --resume)")
        return load_checkpoint(path)

    def predict(self, images, *, backend: str = "auto", verbose: bool = False) -> Predictions:
        """Probabilities for image files or folders (str/Path) or images in memory (PIL images, uint8 arrays
        [H, W, C], uint8 or 0..1 tensors [C, H, W]; a 4-D array or tensor is a batch): what `cnnlab predict RUN`
        gives for the same files, the run's test-time flips and `backend` (auto | torch | onnx) included."""
        items = _as_list(images)
        files = [isinstance(i, str | Path) for i in items]
        tta, best = bool(recorded_tta(self.path)), self.path / RunFile.BEST
        note = print if verbose else _silent
        if all(files):
            classes, preds = predict_images(best, [Path(i) for i in items], tta=tta, backend=backend, log=note)
        elif not any(files):
            names = [f"image {k}" for k in range(len(items))]
            classes, preds = predict_pictures(best, items, names, tta=tta, backend=backend, log=note)
        else:
            raise CnnlabError("give image paths or images in memory, not both in one call")
        return Predictions(classes, [p.path for p in preds], np.stack([p.probabilities for p in preds]))

    def evaluate(
        self, *, positive: str | None = None, threshold_rule: str | None = None, backend: str = "auto"
    ) -> Evaluation:
        """Score best.pt on the test split again (`cnnlab evaluate RUN`; rewrites eval.json); `positive` adds that
        class vs the rest (ROC/AUC, a threshold chosen on validation by `threshold_rule`)."""
        return Evaluation.from_dict(
            evaluate_run(self.path, positive=positive, rule=threshold_rule, backend=backend, log=_silent)
        )

    def explain(self, images: Sequence[str | Path] | None = None, **options) -> dict[str, Any]:
        """`cnnlab explain RUN` (filters, feature maps, attributions with their deletion test, t-SNE) into
        RUN/explain/; `options` are ExplainOptions' fields (methods=[...], embedding="pca", ...)."""
        paths = [Path(p) for p in images] if images else None
        return explain_run(self.path, paths, options=ExplainOptions(**options), force=True, log=_silent)

    def audit(self, *, labels: bool = True) -> dict[str, Any]:
        """`cnnlab audit RUN`: duplicates and leakage across its splits, likely label errors, outliers."""
        return audit_run(self.path, labels=labels, log=print)

    def export(self, *, format: str = "onnx", int8: bool = False, output: str | Path | None = None,
               force: bool = False) -> Path:  # fmt: skip
        """`cnnlab export RUN` after its parity check; returns the file written."""
        result = export_run(self.path, fmt=format, output=Path(output) if output else None, force=force, int8=int8,
                            log=print)  # fmt: skip
        return Path(result["file"])

    def report(self, *, positive: str | None = None, threshold_rule: str | None = None, explain: bool = True) -> Path:
        """RUN/report.html (`cnnlab report RUN`)."""
        return report_run(self.path, positive=positive, rule=threshold_rule, explain=explain, log=_silent)

    def serve(self, *, host: str = "127.0.0.1", port: int = 8000) -> None:
        """`cnnlab serve RUN`: the web page to try the model, until interrupted."""
        require(*SERVE_PACKAGES, purpose="Run.serve")
        from cnnlab.apps.serve import serve_target  # optional heavy dependency: fastapi, uvicorn (checked above)

        serve_target(str(self.path), host=host, port=port)

    def plot_confusion_matrix(self, *, normalize: bool = True):
        """The test split's confusion matrix (row-normalised, or counts)."""
        ev = self._evaluated()
        return plots.plot_confusion_matrix(ev.confusion_matrix, self.class_names, normalize=normalize).figure

    def plot_roc(self):
        """ROC on the test split: the positive class with its operating point, or every class against the rest."""
        ev, test = self._evaluated(), self._test()
        if ev.binary is not None:
            classes, point = [ev.binary.positive], (1 - ev.binary.specificity, ev.binary.sensitivity)
        else:
            classes, point = test.class_names, None
        curves = []
        for name in classes:
            k = test.class_names.index(name)
            fpr, tpr, _ = M.roc_curve(test.labels == k, test.probs[:, k])
            curves.append((name, fpr, tpr, M.roc_auc(test.labels == k, test.probs[:, k])))
        return plots.plot_roc(curves, operating_point=point).figure

    def plot_history(self):
        """Loss and accuracy per epoch (train and valid), the best epoch marked; a frozen head's L2 path."""
        head = self.path / RunFile.HEAD
        if head.is_file():
            path = read_json(head, missing="train the run again")
            return plots.plot_regularisation_path(path["path"], path["l2"])
        return plots.plot_training_curves(read_metrics(self.path))

    def show_results(self, n: int = 16):
        """The first `n` test images titled `predicted (true)`, red where wrong."""
        test = self._test()
        return prediction_grid(test, self._source(), np.arange(min(n, len(test.ids))))

    def show_top_losses(self, n: int = 16):
        """The `n` wrong test predictions the model was surest of, with their probability."""
        test = self._test()
        return prediction_grid(test, self._source(), top_losses(test, n), with_prob=True)

    def _repr_html_(self) -> str:
        ev, cfg = self.evaluation, self.config
        head = f"<h3>cnnlab run <code>{html.escape(str(self.path))}</code></h3>"
        if ev is None:
            return head + "<p>not evaluated yet: <code>run.evaluate()</code></p>"
        model = cfg.model.name + (f" ({cfg.model.strategy})" if cfg.model.strategy else "")
        rows = [("test accuracy", f"{100 * ev.accuracy:.2f}% of {ev.n_test:,}"),
                ("balanced accuracy", f"{100 * ev.balanced_accuracy:.2f}%"), ("test loss", f"{ev.test_loss:.4f}"),
                ("model", model)]  # fmt: skip
        if ev.binary is not None:
            lo, hi = ev.binary.auc_ci95
            rows.append((f"{ev.binary.positive} vs rest AUC", f"{ev.binary.auc:.3f} (95% CI {lo:.3f}-{hi:.3f})"))
        rows += [(f"decision: {k}", v) for k, v in cfg.decisions.items()]
        table = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                        f"{html.escape(str(v))}</td></tr>" for k, v in rows)  # fmt: skip
        pictures = "".join(
            f"<img alt='{alt}' style='max-height:300px' src='data:image/png;base64,{figure_png_base64(fig)}'>"
            for alt, fig in (
                ("training curves", self.plot_history()),
                ("confusion matrix", self.plot_confusion_matrix()),
            )
        )
        return f"{head}<table>{table}</table><div>{pictures}</div>"

    def _evaluated(self) -> Evaluation:
        ev = self.evaluation
        if ev is None:
            raise CnnlabError(f"{self.path} has no {RunFile.EVAL} (evaluate it first: run.evaluate())")
        return ev

    def _test(self) -> PredictionTable:
        self._evaluated()
        return read_predictions(self.path / RunFile.PREDICTIONS)

    def _source(self):
        return load_source(self.config.data, log=_silent)


def _source(data, class_names: Sequence[str] | None) -> str:
    """The data source string for `data`: a named dataset as is, a path as `folder:PATH`, a Dataset registered."""
    if isinstance(data, Path):
        return f"folder:{data}"
    if isinstance(data, str):
        looks_like_path = "/" in data or Path(data).exists()
        if data in NAMED_SOURCES or data.startswith(("folder:", "dataset:")) or not looks_like_path:
            return data
        return f"folder:{data}"
    names = class_names if class_names is not None else getattr(data, "classes", None)
    if names is None:
        raise CnnlabError(f"a {type(data).__name__} has no `classes`: pass class_names=[...] (one per label)")
    return register_dataset(data, list(names))


def _as_list(images) -> list:
    """One image, a batch (4-D array or tensor) or a sequence of them, as a list."""
    if isinstance(images, str | Path | Image.Image):
        return [images]
    if isinstance(images, np.ndarray | torch.Tensor):
        return list(images) if images.ndim == 4 else [images]
    items = list(images)
    if not items:
        raise CnnlabError("no images to predict (give a path, an image, or a list of them)")
    return items


def _silent(_: str) -> None:
    pass


def _show(obj) -> None:
    """Display `obj` below the running cell in a Jupyter kernel; nothing elsewhere (a script or the CLI)."""
    ipython = sys.modules.get("IPython")
    if ipython is not None and ipython.get_ipython() is not None:
        from IPython.display import display  # optional: only inside an IPython kernel

        display(obj)


def _notebook_setup() -> None:
    """In an IPython kernel: cnnlab's figures (Figures made outside pyplot) shown inline as PNG, and a cnnlab error
    shown as its one line, as the CLI prints it. Elsewhere nothing changes."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "_cnnlab_ready", False):
        return
    from matplotlib.figure import Figure  # optional heavy dependency: matplotlib (drawing only)

    shell.display_formatter.formatters["image/png"].for_type(Figure, _figure_png)
    shell.set_custom_exc((CnnlabError,), _one_line_error)
    shell._cnnlab_ready = True


def _figure_png(fig) -> bytes:
    return base64.b64decode(figure_png_base64(fig))


def _one_line_error(shell, etype, value, tb, tb_offset=None) -> None:
    print(f"error: {value}", file=sys.stderr)
