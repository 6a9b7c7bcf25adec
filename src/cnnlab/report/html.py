"""`write_report(run_dir)`: RUN/report.html, one self-contained file in the order a reviewer reads.

Summary, curves, per-class table, confusion matrix, ROC and threshold (when a positive class is set),
calibration, sample predictions, top losses. Plots are PNGs embedded as data URIs: no network, opens
from disk.
"""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.audit.gate import about_the_data
from cnnlab.data.sources import Source, load_source
from cnnlab.errors import CnnlabError
from cnnlab.evaluate import metrics as M
from cnnlab.evaluate import plots
from cnnlab.evaluate.analysis import PredictionTable, parse_probability, read_csv_rows, read_predictions
from cnnlab.files import read_json, write_text_atomic
from cnnlab.models.checkpoint import load_checkpoint
from cnnlab.models.pretrained import FROZEN_STRATEGIES
from cnnlab.runs import RunFile, open_run
from cnnlab.version import __version__

N_SAMPLES, N_TOP_LOSSES = 24, 16


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = Path(run_dir) / RunFile.METRICS
    if not path.is_file():
        raise CnnlabError(f"{path} is missing (train the run first)")
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def read_readers(path: Path) -> list[tuple[str, float, float]]:
    """Human readers for the ROC plot: CSV with columns name, sensitivity, specificity."""
    rows, header = read_csv_rows(path)
    missing = {"name", "sensitivity", "specificity"} - set(header)
    if missing:
        raise CnnlabError(
            f"{path}: missing column(s) {', '.join(sorted(missing))} (expected name,sensitivity,specificity)"
        )
    return [
        (r["name"], parse_probability(r["sensitivity"], path, "sensitivity", i),
         parse_probability(r["specificity"], path, "specificity", i))
        for i, r in enumerate(rows)
    ]  # fmt: skip


def load_evaluation(run_dir: Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / RunFile.EVAL, missing=f"run `cnnlab evaluate {run_dir}` first")


def write_report(
    run_dir: Path,
    *,
    source: Source | None = None,
    readers: Path | None = None,
    explain: bool = True,
) -> Path:
    """Render RUN/report.html from what evaluation wrote (eval.json, predictions, metrics). With a `binary`
    block in eval.json, the ROC and threshold section is included. With `explain`, `cnnlab explain` runs
    first (writing RUN/explain/) and its pictures and deletion table form the "Inside the model" section."""
    run_dir = Path(run_dir)
    config = open_run(run_dir)
    ev = load_evaluation(run_dir)
    rows = read_metrics(run_dir)
    test = read_predictions(run_dir / RunFile.PREDICTIONS)
    reader_points = read_readers(readers) if readers else None
    source = source or load_source(config.data)
    head_file = run_dir / RunFile.HEAD
    head = read_json(head_file, missing="train the run again to redraw its head") if head_file.is_file() else None
    figs = _figures(rows, ev, test, source, reader_points, head=head, candidates=config.model.strategy_candidates)
    context = _context(run_dir, config, ev, rows, figs)
    context["head"] = head
    context["inside"] = inside_the_model(run_dir) if explain else None
    context["about_data"] = about_the_data(run_dir, source)
    html = _render("report.html.j2", **context)
    out = run_dir / RunFile.REPORT
    write_text_atomic(out, html)
    return out


def _figures(rows, ev, test: PredictionTable, source: Source, readers, *, head: dict | None,
             candidates: list[dict] | None) -> dict[str, str]:  # fmt: skip
    enc = plots.figure_png_base64
    names = test.class_names
    curves = plots.plot_regularisation_path(head["path"], head["l2"]) if head else plots.plot_training_curves(rows)
    figs = {
        "curves": enc(curves),
        "per_class": enc(plots.plot_per_class_accuracy(names, [_class_accuracy(ev, n) for n in names]).figure),
        "confusion": enc(plots.plot_confusion_matrix(np.array(ev["confusion_matrix"]), names).figure),
        "calibration": enc(plots.plot_reliability(M.reliability(test.labels, test.probs), ev["ece"]).figure),
    }
    if ev.get("binary"):
        b = ev["binary"]
        k = names.index(b["positive"])
        y, s = test.labels == k, test.probs[:, k]
        fpr, tpr, _ = M.roc_curve(y, s)
        point = (1 - b["specificity"], b["sensitivity"])
        roc = plots.plot_roc([(b["positive"], fpr, tpr, b["auc"])], readers=readers, operating_point=point)
        figs["roc"] = enc(roc.figure)
        precision, recall, ap = M.precision_recall(y, s)
        figs["pr"] = enc(plots.plot_precision_recall(b["positive"], precision, recall, ap).figure)
    if candidates and all("status" in row for row in candidates):  # the model search's table (training/auto.py)
        figs["candidates"] = enc(plots.plot_candidates(candidates).figure)
    figs["samples"] = enc(prediction_grid(test, source, np.arange(min(N_SAMPLES, len(test.ids)))))
    figs["top_losses"] = enc(prediction_grid(test, source, top_losses(test), with_prob=True))
    return figs


def inside_the_model(run_dir: Path) -> dict[str, Any]:
    """What `cnnlab explain` wrote into RUN/explain/, as the report's "Inside the model" section: the pictures
    (base64), the deletion table and the embedding line; or why it is not there."""
    folder = run_dir / RunFile.EXPLAIN
    path = folder / RunFile.EXPLAIN_JSON
    if not path.is_file():
        return {"unavailable": f"not explained yet (cnnlab explain {run_dir}, then cnnlab report {run_dir})"}
    result = json.loads(path.read_text())
    if "unavailable" in result:
        return {"unavailable": result["unavailable"]}
    pictures = {p.stem: base64.b64encode(p.read_bytes()).decode("ascii") for p in folder.glob("*.png")}
    d = result["deletion"]
    table = [(m, d["areas"][m], d["drop_at_10pct"][m], m == "random" or d["beats_random"][m])
             for m in sorted(d["areas"], key=d["areas"].get)]  # fmt: skip
    return {"pictures": pictures, "deletion": d, "table": table, "embedding": result["embedding"],
            "gradcam_layer": result.get("gradcam_layer"), "skipped": result.get("skipped")}  # fmt: skip


def _class_accuracy(ev: dict, name: str) -> float:
    value = ev["per_class"][name]["accuracy"]
    return 0.0 if value is None else value


def top_losses(test: PredictionTable, n: int = N_TOP_LOSSES) -> np.ndarray:
    """Rows of the `n` wrong predictions with the highest loss (the model surest of a wrong class), worst first."""
    p_true = test.probs[np.arange(len(test.labels)), test.labels]
    losses = -np.log(np.clip(p_true, 1e-12, 1))
    wrong = np.flatnonzero(test.predicted != test.labels)
    return wrong[np.argsort(-losses[wrong], kind="stable")][:n]


def prediction_grid(test: PredictionTable, source: Source, rows: np.ndarray, *, with_prob: bool = False):
    """A figure of the test images at `rows` of `test`, titled `pred (true)` (with the probability)."""
    where = {sid: i for i, sid in enumerate(source.ids)}
    missing = [test.ids[r] for r in rows if test.ids[r] not in where]
    if missing:
        raise CnnlabError(f"prediction id '{missing[0]}' is not in the data source (was the data changed?)")
    images = source.images[[where[test.ids[r]] for r in rows]].numpy() if len(rows) else np.zeros((0, 1, 1, 1))
    names = test.class_names
    titles, correct = [], []
    for r in rows:
        pred, true = names[test.predicted[r]], names[test.labels[r]]
        suffix = f" {100 * test.probs[r, test.predicted[r]]:.0f}%" if with_prob else ""
        titles.append(f"{pred}{suffix} ({true})")
        correct.append(pred == true)
    return plots.plot_image_grid(images, titles, correct)


def _context(run_dir: Path, config, ev: dict, rows, figs) -> dict[str, Any]:
    splits = json.loads((run_dir / RunFile.SPLITS).read_text())
    seconds = sum(float(r["seconds"]) for r in rows)
    n_train = len(splits["train"])
    t = config.train
    best = min(rows, key=lambda r: float(r["valid_loss"]))
    summary = [
        ("data", f"{config.data.source}: train {n_train}, valid {len(splits['valid'])}, test {len(splits['test'])}"),
        ("model", f"{config.model.name} ({count_parameters(run_dir)} parameters)"),
        ("recipe", recipe(config)),
        ("augmentation", config.data.augment),
        *_decision_rows(config),
        ("epochs run", f"{len(rows)} of {t.epochs}; best by valid loss: epoch {best['epoch']}"),
        ("test loss", f"{ev['test_loss']:.4f}"),
        ("training time", _training_time(config, seconds, n_train * len(rows))),
    ]
    for key in ("top_2", "top_3", "top_5"):
        if ev.get(key) is not None:
            summary.append((key.replace("_", "-") + " accuracy", pct(ev[key])))
    return {
        "name": run_dir.name, "title": f"{run_dir.name}: {config.model.name} on {config.data.source}",
        "ev": ev, "binary": ev.get("binary"), "summary": summary, "figs": figs,
        "version": __version__, "run_dir": str(run_dir), "pct": pct, "num": num,
    }  # fmt: skip


def _training_time(config, seconds: float, images: int) -> str:
    """The epochs' time; with a model search, the whole search too (it includes the backbone's feature pass,
    which a frozen head's own fit, on cached features, does not)."""
    searched = [row for row in config.model.strategy_candidates or [] if "status" in row]
    if config.model.strategy in FROZEN_STRATEGIES:
        text = f"{seconds:.1f} s fitting the head on cached backbone features"
    else:
        text = f"{seconds:.0f} s ({images / max(seconds, 1e-9):,.0f} train images/s)"
    if searched:
        text += f"; the model search, this candidate included, took {sum(r['seconds'] for r in searched):.0f} s"
    return text


def _decision_rows(config) -> list[tuple[str, str]]:
    """The transfer-learning strategy (when auto chose it: why, and the candidates' validation scores), then
    every other decision taken from the data (image size, flips, batch size, the head's L2)."""
    model, rows = config.model, []
    if model.strategy:
        how = f" (auto: {model.strategy_reason})" if model.strategy_reason else " (chosen by the user)"
        rows.append(("transfer strategy", model.strategy + how))
    for row in model.strategy_candidates or []:
        scores = ", ".join(f"{k.replace('_', ' ')} {v:g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                           for k, v in row.items() if k != "candidate" and v is not None)  # fmt: skip
        rows.append((f"candidate: {row['candidate']}", scores))
    rows += [(f"decided: {key.replace('_', ' ')}", why) for key, why in config.decisions.items()]
    return rows


def recipe(config) -> str:
    t = config.train
    return (
        f"{t.optimizer} lr {t.lr:g}, {t.schedule}, batch {t.batch_size}, weight decay {t.weight_decay:g}, seed {t.seed}"
    )


def count_parameters(run_dir: Path) -> str:
    weights = load_checkpoint(run_dir / RunFile.BEST).weights
    buffers = ("running_mean", "running_var", "num_batches_tracked")  # batch-norm statistics, not parameters
    return f"{sum(v.numel() for k, v in weights.items() if not k.endswith(buffers)):,}"


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _render(template: str, **context) -> str:
    from jinja2 import (
        Environment,
        PackageLoader,
        select_autoescape,
    )  # optional heavy import: Jinja2 (HTML rendering only)

    env = Environment(loader=PackageLoader("cnnlab.report", "templates"), autoescape=select_autoescape(["j2", "html"]))
    return env.get_template(template).render(**context)
