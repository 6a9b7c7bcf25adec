"""Execute the course notebooks (notebooks/*.ipynb, kept without outputs) into docs/notebooks/ with their outputs:
the pages `make docs` renders (mkdocs-jupyter), and what tests/test_notebooks.py reads.

A notebook is executed top to bottom in a fresh kernel with the repository as its working folder (data/ and runs/
there); any error fails. An executed copy records a key (the notebook's bytes and cnnlab's source files): while the
key holds, the copy is reused, so `make test` executes each notebook once (docs first, then the tests read them).

    python scripts/notebooks.py              # every notebook; prints each one's seconds
    python scripts/notebooks.py 00-quickstart
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "notebooks"
EXECUTED = ROOT / "docs" / "notebooks"
CELL_TIMEOUT_S = 900


def names() -> list[str]:
    return sorted(p.stem for p in SOURCES.glob("*.ipynb"))


def execute(name: str) -> nbformat.NotebookNode:
    """The executed notebook `name`, reused from docs/notebooks/ while its key holds, else executed now."""
    source, out = SOURCES / f"{name}.ipynb", EXECUTED / f"{name}.ipynb"
    key = _key(source)
    if out.is_file():
        done = nbformat.read(out, as_version=4)
        if done.metadata.get("cnnlab", {}).get("key") == key:
            return done
    nb = nbformat.read(source, as_version=4)
    started = time.perf_counter()
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})  # fmt: skip
    # the kernel process's own stderr is its start-up chatter (a warning about TCP on localhost); what the cells
    # print, errors included, comes back through Jupyter's messages into the notebook
    client.execute(stderr=subprocess.DEVNULL)
    nb.metadata["cnnlab"] = {"key": key, "seconds": round(time.perf_counter() - started, 1)}
    EXECUTED.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=EXECUTED, suffix=".tmp", delete=False) as fh:
        nbformat.write(nb, fh)
    os.chmod(fh.name, 0o644)  # a temporary file is private; the page is not
    os.replace(fh.name, out)
    return nb


def _key(source: Path) -> str:
    """What an executed copy depends on: the notebook and every file of the package."""
    digest = hashlib.sha256(source.read_bytes())
    for path in sorted((ROOT / "src" / "cnnlab").rglob("*")):
        if path.is_file() and path.suffix in {".py", ".j2"}:
            digest.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def main(wanted: list[str]) -> None:
    total = 0.0
    for name in wanted or names():
        started = time.perf_counter()
        nb = execute(name)
        took = time.perf_counter() - started
        total += took
        print(
            f"{name}: {took:5.1f} s" + ("" if took > 1 else f" (reused; executed in {nb.metadata.cnnlab.seconds} s)"),
            flush=True,
        )
    print(f"notebooks: {total:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
