"""The run folder: every file name in it (declared once, here), naming a run, creating it without clobbering,
cleaning up after a failed start, reopening it, and the one writer of its config.yaml."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cnnlab.config import RunConfig, load_config, save_config
from cnnlab.errors import CnnlabError


class RunFile:
    """The name of every file cnnlab keeps in a run folder; code refers to these, never to the strings."""

    CONFIG = "config.yaml"  # the resolved config: every `auto` replaced by what was decided
    SPLITS = "splits.json"  # each split's files by identity (data/splits.py)
    METRICS = "metrics.csv"  # one row per epoch
    HEAD = "head.json"  # a frozen head's regularisation path (the L2 strengths tried, scored on validation)
    BEST = "best.pt"  # the lowest validation loss
    LAST = "last.pt"  # the last finished epoch, with the optimiser state (resume)
    PREDICTIONS = "predictions.csv"  # test
    VALID_PREDICTIONS = "valid_predictions.csv"
    EVAL = "eval.json"
    REPORT = "report.html"
    EXPORT = "export.json"
    BENCHMARK = "benchmark.json"
    AUDIT_CSV = "audit.csv"
    AUDIT_JSON = "audit.json"
    EXPLAIN = "explain"  # cnnlab explain's folder
    EXPLAIN_JSON = "explain.json"
    PLOTS = "plots"


def default_run_name(config: RunConfig) -> str:
    """`<data>-<model>-<YYYYmmdd-HHMMSS>`, e.g. `fashion-mnist-simple_cnn_bn-20261128-183000`."""
    return f"{source_slug(config.data.source)}-{config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def source_slug(source: str) -> str:
    """A data source as a folder-name part: `fashion-mnist`, or a folder's own name (`folder:~/my pets/` ->
    `my-pets`, `folder:data/samples/fashion-60-0` -> `fashion-60-0`)."""
    if source.startswith("folder:"):
        source = Path(source.removeprefix("folder:").rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", source).strip("-") or "data"


def claim_run_dir(runs_dir: Path, name: str, *, force: bool) -> Path:
    """The path for a new run; an existing one is an error unless `force` (then it is removed)."""
    if not name or "/" in name or name in {".", ".."}:
        raise CnnlabError(f"invalid run name '{name}' (use letters, digits, '-', '_' and '.')")
    path = Path(runs_dir) / name
    if path.exists():
        if not force:
            raise CnnlabError(
                f"run folder {path} already exists (choose another --name, or pass --force to replace it)"
            )
        shutil.rmtree(path)
    return path


@contextmanager
def creating_run_dir(path: Path) -> Iterator[Path]:
    """Create `path`; if the body fails before any epoch is saved, remove it so no partial run is left.

    A run that saved `last.pt` is kept (an interrupted run can be resumed). Two runs started on the same name at
    once: the second to create the folder stops with a clear error and leaves the first one's folder alone.
    """
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        raise CnnlabError(f"run folder {path} was just created by another run (choose another --name)") from None
    try:
        yield path
    except BaseException:
        if not (path / RunFile.LAST).exists():
            shutil.rmtree(path, ignore_errors=True)
        raise


def open_run(run_dir: Path) -> RunConfig:
    """The config of an existing run folder, with a clear error when it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnlabError(f"run folder not found: {run_dir} (pass a folder made by `cnnlab train`)")
    if not (run_dir / RunFile.CONFIG).is_file():
        raise CnnlabError(f"{run_dir} is not a cnnlab run folder (no {RunFile.CONFIG})")
    return load_config(run_dir / RunFile.CONFIG)


def claim_shared_run_dir(fabric, runs_dir: Path, name: str, *, force: bool) -> Path:
    """`claim_run_dir` under DDP: rank 0 claims the folder and tells the others its path (or the error, so no
    rank waits forever)."""
    claimed, error = None, None
    if fabric.is_global_zero:
        try:
            claimed = str(claim_run_dir(Path(runs_dir), name, force=force))
        except CnnlabError as exc:
            error = str(exc)
    if fabric.world_size > 1:
        claimed, error = fabric.broadcast((claimed, error), src=0)
    if error:
        raise CnnlabError(error)
    return Path(claimed)


def write_run_config(run_dir: Path, config: RunConfig) -> None:
    """config.yaml of a run: the one writer (atomic). The pipeline calls it when the plan is made and after
    training returns what it decided (budget epochs, measured flips, a head's regularisation)."""
    save_config(config, Path(run_dir) / RunFile.CONFIG)


def refuse_existing(path: Path, *, force: bool, option: str = "--output") -> None:
    """An output the user already has is kept unless they pass --force: the one guard every command uses."""
    if Path(path).exists() and not force:
        raise CnnlabError(f"{path} already exists (choose another {option} or pass --force)")


def recorded_tta(run_dir: Path) -> bool | None:
    """Whether this run's predictions average each image with its mirror image, as its evaluation decided
    (eval.json), or as config.yaml says (--tta/--no-tta, and runs evaluated before eval.json kept it); None when
    nothing has decided yet."""
    path = Path(run_dir) / RunFile.EVAL
    if path.is_file():
        tta = json.loads(path.read_text()).get("tta")
        if tta is not None:
            return bool(tta)
    return open_run(run_dir).evaluation.tta
