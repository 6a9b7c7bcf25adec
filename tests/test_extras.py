"""`pip install cnnlab` trains, evaluates and predicts; a command missing its extra says which one in one line and
writes nothing; every package the code imports is declared."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
from PIL import Image
from sklearn.datasets import load_digits

from cnnlab.extras import OPTIONAL

ROOT = Path(__file__).resolve().parent.parent
HIDE_OPTIONAL = "import sys; sys.modules.update({m: None for m in %r}); from cnnlab.cli import main; main(%r)"


def _declared() -> dict[str, set[str]]:
    """The distributions pyproject.toml declares: 'core' and each extra (lower-case, '_' as '-')."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    norm = lambda req: req.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()  # noqa: E731
    found = {"core": {norm(r).replace("_", "-") for r in project["dependencies"]}}
    for extra, reqs in project["optional-dependencies"].items():
        found[extra] = {norm(r).replace("_", "-") for r in reqs}
    return found


def _imported_modules() -> set[str]:
    """Top-level names of every module that cnnlab's source imports, anywhere in a file."""
    names = set()
    for path in (ROOT / "src" / "cnnlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_imported_package_is_declared_and_each_optional_one_in_its_extra():
    declared = _declared()
    dists = packages_distributions()
    stdlib = set(sys.stdlib_module_names) | {"cnnlab", "IPython"}  # IPython: only inside a Jupyter kernel
    for module in sorted(_imported_modules() - stdlib):
        names = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        if module in OPTIONAL:
            package, extra = OPTIONAL[module]
            assert package in declared[extra], f"{module} ({package}) is not in the [{extra}] extra"
            assert package not in declared["core"], f"{package} is optional but a core dependency"
        else:
            assert names & declared["core"], f"{module} is imported but its package {names} is not a dependency"


def test_the_all_extra_names_every_other_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set(project["optional-dependencies"]) - {"all", "dev"}
    (everything,) = project["optional-dependencies"]["all"]
    assert set(everything.removeprefix("cnnlab[").removesuffix("]").split(",")) == extras


AUDIT_LABELS = "cnnlab audit's label checks (--no-labels skips them)"


@pytest.mark.parametrize(
    ("hidden", "args", "purpose", "extra"),
    [
        ("captum", ["explain", "RUN"], "cnnlab explain", "explain"),
        ("onnxruntime", ["export", "RUN"], "cnnlab export", "export"),
        ("cleanlab", ["audit", "RUN"], AUDIT_LABELS, "audit"),
        ("fastapi", ["serve", "RUN", "--port", "0"], "cnnlab serve", "serve"),
    ],
)
def test_a_command_without_its_extra_names_the_pip_command_and_writes_nothing(
    hidden, args, purpose, extra, digits_cnn_run, cli, monkeypatch
):  # fmt: skip
    monkeypatch.setitem(sys.modules, hidden, None)  # as if not installed: `import` fails, find_spec finds nothing
    before = sorted(p.name for p in digits_cnn_run.iterdir())
    code, out, err = cli(*[digits_cnn_run if a == "RUN" else a for a in args])
    assert (
        code == 2 and err.strip() == f"error: {purpose} needs {hidden}, not installed (pip install 'cnnlab[{extra}]')"
    )
    assert sorted(p.name for p in digits_cnn_run.iterdir()) == before


@pytest.mark.slow
def test_the_core_install_trains_evaluates_and_predicts_without_any_extra(tmp_path):
    """Every optional package hidden: a digits run is trained, evaluated, reported and used to predict."""
    hidden = sorted(OPTIONAL)
    train = ["train", "--data", "digits", "--epochs", "2", "--runs-dir", str(tmp_path), "--name", "core"]
    done = subprocess.run([sys.executable, "-c", HIDE_OPTIONAL % (hidden, train)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "explain: skipped (cnnlab explain needs captum" in done.stdout  # the report says why, training stands
    run = tmp_path / "core"
    assert (run / "eval.json").is_file() and (run / "report.html").is_file()

    image = tmp_path / "digit.png"
    Image.fromarray((load_digits().images[0] * 255 / 16).astype("uint8")).save(image)
    done = subprocess.run([sys.executable, "-c", HIDE_OPTIONAL % (hidden, ["predict", str(run), str(image)])],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{image}: ")


@pytest.mark.slow
def test_the_wheel_holds_the_templates_and_the_command(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    (wheel,) = tmp_path.glob("cnnlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cnnlab/report/templates/report.html.j2" in names and "cnnlab/apps/templates/serve.html.j2" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cnnlab = cnnlab.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
