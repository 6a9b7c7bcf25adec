"""The course notebooks (notebooks/*.ipynb) run top to bottom, and the quickstart's three lines give what the CLI
gives. Executed by scripts/notebooks.py into docs/notebooks/ (`make docs` does it first in `make test`, so these
tests read the executed copies while cnnlab's source is unchanged, and execute them otherwise)."""

from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

import notebooks

LESSONS = 17  # docs/course.md's table


def _outputs(cell, kind: str) -> list:
    return [o for o in cell.get("outputs", []) if o.output_type == kind]


def _stdout(cell) -> str:
    return "".join(o.text for o in _outputs(cell, "stream") if o.name == "stdout")


def test_every_lesson_of_the_course_has_a_notebook():
    course = Path("docs/course.md").read_text()
    rows = re.findall(r"^\| (\d+) \|", course, flags=re.M)
    assert len(rows) == LESSONS
    numbered = [n for n in notebooks.names() if n[:2].isdigit() and n[:2] != "00"]
    assert [int(n[:2]) for n in numbered] == list(range(1, LESSONS + 1))


@pytest.mark.slow
@pytest.mark.parametrize("name", notebooks.names())
def test_notebook_runs_top_to_bottom(name):
    nb = notebooks.execute(name)  # a cell that raises fails here
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code)
    assert not any(_outputs(c, "error") for c in code)


@pytest.mark.slow
def test_quickstart_is_three_lines_and_gives_what_the_cli_gives(cli, tmp_path):
    nb = notebooks.execute("00-quickstart")
    cell = next(c for c in nb.cells if c.cell_type == "code" and "cnnlab.train(" in c.source)
    lines = [line for line in cell.source.splitlines() if line.strip()]
    imports = [n for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert len(lines) <= 3 and len(imports) == 1
    shown = [o for o in _outputs(cell, "display_data") if "text/html" in o.data]
    assert shown and "alt='confusion matrix'" in shown[0].data["text/html"]  # the run, displayed when training ends
    run = Path(re.search(r"run folder: (\S+)", _stdout(cell)).group(1))
    predicted = _outputs(cell, "execute_result")[0].data["application/json"]
    files = predicted["names"]
    assert len(files) == 3
    code, _, err = cli("predict", run, *files, "--output", tmp_path / "p.csv")
    assert code == 0, err
    with (tmp_path / "p.csv").open() as fh:
        expected = np.array([[float(v) for v in row[2:]] for row in list(csv.reader(fh))[1:]])
    np.testing.assert_allclose(np.array(predicted["probabilities"]), expected, atol=1e-6)
    saved = json.loads((run / "eval.json").read_text())
    evaluation = next(c for c in nb.cells if c.cell_type == "code" and "run.evaluation" in c.source)
    shown = _outputs(evaluation, "execute_result")[0].data["text/plain"]
    assert shown == repr((saved["accuracy"], saved["per_class"]["Shirt"]["recall"]))


@pytest.mark.slow
def test_training_in_a_notebook_shows_each_epoch_as_it_ends():
    nb = notebooks.execute("02-splits-and-best-checkpoint")
    cell = next(c for c in nb.cells if c.cell_type == "code" and "cnnlab.train(" in c.source)
    planned = int(re.search(r"epochs=(\d+)", cell.source).group(1))
    epochs = [o.text for o in _outputs(cell, "stream") if re.search(rf"^epoch +\d+/{planned}", o.text, flags=re.M)]
    assert len(epochs) == planned  # one message per epoch, sent when it ended (not one block at the end)
