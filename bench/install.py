"""Install size and time: `pip install cnnlab` (core) against `pip install 'cnnlab[all]'`, from the wheel
`python -m build` makes, each into a fresh venv; then `cnnlab train --data digits --dry-run` in each (the wheel's
templates and package data must be inside). The baseline is [all]: the ratios say what the core install saves.

pip's own cache is used as pip finds it (a second run downloads nothing); the venvs and the wheel are temporary.
Prints one JSON line.

Usage: .venv/bin/python bench/install.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnlab.machine import CpuInfo

ROOT = Path(__file__).resolve().parent.parent
TORCH_PARTS = ("torch", "nvidia", "triton", "cuda")  # torch's wheel and the CUDA libraries it pulls in (most of it)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp), str(ROOT)],
                       check=True, capture_output=True)  # fmt: skip
        (wheel,) = tmp.glob("cnnlab-*.whl")
        cpu = CpuInfo.here()
        result = {"bench": "install", "cpu": cpu.name, "capability": cpu.capability, "python": sys.version.split()[0]}
        for name, spec in (("core", str(wheel)), ("all", f"{wheel}[all]")):
            result[name] = _install(tmp / name, spec, tmp)
        result["core_vs_all_size"] = round(result["core"]["mb"] / result["all"]["mb"], 3)
        result["core_vs_all_size_besides_torch"] = round(
            result["core"]["mb_besides_torch"] / result["all"]["mb_besides_torch"], 3
        )
        result["core_vs_all_time"] = round(result["core"]["seconds"] / result["all"]["seconds"], 3)
    print(json.dumps(result))


def _install(venv: Path, spec: str, work: Path) -> dict:
    """A fresh venv with `spec` installed: seconds, site-packages size, packages, and the dry run's exit code."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    started = time.perf_counter()
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", spec], check=True)
    seconds = time.perf_counter() - started
    site = next((venv / "lib").glob("python*/site-packages"))
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    torch_parts = sum(p.stat().st_size for d in site.iterdir() if d.name.startswith(TORCH_PARTS)
                      for p in d.rglob("*") if p.is_file())  # fmt: skip
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format", "freeze"], capture_output=True, text=True)
    dry = subprocess.run([str(venv / "bin" / "cnnlab"), "train", "--data", "digits", "--dry-run"], cwd=work,
                         capture_output=True, text=True)  # fmt: skip
    tail = dry.stdout.strip().splitlines()[-1:] or [dry.stderr[-300:]]
    return {"seconds": round(seconds, 1), "mb": round(size / 1e6, 1),
            "mb_besides_torch": round((size - torch_parts) / 1e6, 1), "packages": len(listed.stdout.splitlines()),
            "dry_run_exit": dry.returncode, "dry_run": tail[0]}  # fmt: skip


if __name__ == "__main__":
    main()
