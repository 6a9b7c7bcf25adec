"""`write_comparison(runs, out)`: runs side by side (the course's "MLP vs CNN" lesson in one command)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.evaluate import plots
from cnnlab.files import write_text_atomic
from cnnlab.report.html import _render, count_parameters, load_evaluation, read_metrics, recipe
from cnnlab.runs import RunFile, open_run


def comparison_rows(run_dirs: list[Path]) -> list[dict[str, str]]:
    """One row per run: model, parameters, recipe, epochs, best valid loss, test accuracy, time, speed."""
    rows = []
    for run_dir in run_dirs:
        config = open_run(run_dir)
        metrics = read_metrics(run_dir)
        ev = load_evaluation(run_dir)
        seconds = sum(float(r["seconds"]) for r in metrics)
        n_train = len(json.loads((run_dir / RunFile.SPLITS).read_text())["train"])
        rows.append({
            "name": run_dir.name, "model": config.model.name, "params": count_parameters(run_dir),
            "recipe": recipe(config), "epochs": str(len(metrics)),
            "best_valid_loss": f"{min(float(r['valid_loss']) for r in metrics):.4f}",
            "accuracy": f"{100 * ev['accuracy']:.2f}%", "time": f"{seconds:.0f} s",
            "speed": f"{n_train * len(metrics) / max(seconds, 1e-9):,.0f}",
        })  # fmt: skip
    return rows


def write_comparison(run_dirs: list[Path], output: Path, *, force: bool = False) -> Path:
    """Write `output` (HTML, plots embedded); an existing file is kept unless `force`."""
    if len(run_dirs) < 2:
        raise CnnlabError("compare needs at least two run folders")
    output = Path(output)
    if output.exists() and not force:
        raise CnnlabError(f"{output} already exists (choose another --output or pass --force)")
    rows = comparison_rows([Path(r) for r in run_dirs])
    curves = plots.plot_run_comparison([(Path(r).name, read_metrics(Path(r))) for r in run_dirs])
    html = _render("compare.html.j2", rows=rows, curves=plots.figure_png_base64(curves))
    write_text_atomic(output, html)
    return output


def compare_runs(run_dirs: list[Path], output: Path, *, force: bool = False, dry_run: bool = False,
                 log: Callable[[str], None] = print) -> list[dict[str, str]]:  # fmt: skip
    """`cnnlab compare`: one line per run, and the comparison page unless `dry_run`."""
    rows = comparison_rows(run_dirs)
    for r in rows:
        log(f"{r['name']:<40} {r['model']:<14} {r['params']:>10} params  acc {r['accuracy']:>7}  "
            f"best valid loss {r['best_valid_loss']}  {r['time']:>6}  {r['speed']} img/s")  # fmt: skip
    if not dry_run:
        log(f"wrote {write_comparison(run_dirs, output, force=force)}")
    return rows
