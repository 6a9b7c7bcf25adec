"""The run folder: naming, creating it without clobbering, cleaning up after a failed start, reopening."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cnnlab.config import RunConfig, load_config, save_config, with_decisions
from cnnlab.errors import CnnlabError


def default_run_name(config: RunConfig) -> str:
    """`<data>-<model>-<YYYYmmdd-HHMMSS>`, e.g. `fashion-mnist-simple_cnn_bn-20261128-183000`."""
    return f"{source_slug(config.data.source)}-{config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def source_slug(source: str) -> str:
    """A data source as a folder-name part: `fashion-mnist`, or a folder's last name (`folder:~/my pets/` -> `pets`)."""
    data = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.replace("folder:", "").strip("/")).strip("-")
    data = data.rsplit("-", 1)[-1] if source.startswith("folder:") else data
    return data or "data"


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
        if not (path / "last.pt").exists():
            shutil.rmtree(path, ignore_errors=True)
        raise


def open_run(run_dir: Path) -> RunConfig:
    """The config of an existing run folder, with a clear error when it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnlabError(f"run folder not found: {run_dir} (pass a folder made by `cnnlab train`)")
    if not (run_dir / "config.yaml").is_file():
        raise CnnlabError(f"{run_dir} is not a cnnlab run folder (no config.yaml)")
    return load_config(run_dir / "config.yaml")


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


def record_config(run_dir: Path, config: RunConfig, template, *, writer: bool, **decisions: str) -> None:
    """A decision taken during the run: `config` (with the new `decisions`) goes into the checkpoint `template`
    and, for the writer (rank 0), into config.yaml, so resume and evaluation follow it."""
    config = with_decisions(config, **decisions)
    template.config = config.to_dict()
    if writer and run_dir.is_dir():  # a dry run's temporary folder may be gone already
        save_config(config, run_dir / "config.yaml")
