#!/bin/sh
# cnnlab's GPU figures in one go (bench/gpu.py): one JSON line, about 10 minutes on one GPU.
# Python: the checkout's .venv (make demo's set-up) if there is one; else a python3 that already holds torch,
# timm and lightning (a GPU image), with src/ on the path; else make demo's set-up is made first.
# A machine without network needs Fashion-MNIST at hand (carry data/, or /usr/share/datasets/fashion-mnist),
# and data/cifar-10-batches-py for the CIFAR-10 part.
set -e
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
elif python3 -c "import torch, timm, lightning, typer, sklearn" 2>/dev/null; then
  PY=python3
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  make .venv/.installed data
  PY=.venv/bin/python
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 "$PY" bench/gpu.py "$@"
