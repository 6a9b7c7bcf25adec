"""Prediction backends: the same logits from a trained model run by PyTorch (batch norm folded, channels_last)
or by ONNX Runtime, chosen for `evaluate` and `predict` by measurement on the machine at hand.

`auto` times both on the job's own images and takes the faster one that agrees with PyTorch (relative logit
difference <= graph.PARITY_TOLERANCE). The ONNX file is built once per checkpoint (the torch.export-based
exporter takes 1-10 s) and kept, with the measurement, in the run's `cache/` folder; a job that PyTorch
would finish in under BUILD_MIN_SECONDS (estimated from one pass over the sample) does not pay for building
it, but follows a measurement already kept. On a GPU, PyTorch runs
there and ONNX Runtime (CPU here) is not considered.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.data.cache import weights_digest
from cnnlab.errors import CnnlabError
from cnnlab.extras import ONNX_PACKAGES, install_hint, installed
from cnnlab.machine import CpuInfo
from cnnlab.predict import graph
from cnnlab.predict.graph import PARITY_TOLERANCE, folded, write_onnx
from cnnlab.predict.onnx import open_session

BACKENDS = ("auto", "torch", "onnx")
BUILD_MIN_SECONDS = 3.0  # a job PyTorch finishes sooner cannot pay back building the ONNX file (1-10 s)
SAMPLE_IMAGES = 64  # images timed per backend (a batch of the job's own images)
MIN_TIMED_S = 0.3  # time each backend at least this long (and at least 3 runs)
SERVED_IMAGES = 1_000  # what a server (serve, the dog app's page) is taken to answer: worth one ONNX build


@dataclass
class Backend:
    name: str  # "torch" or "onnx"
    forward: nn.Module  # normalised float images [N, C, H, W] -> logits
    why: str


@dataclass
class Timing:
    torch_images_per_s: float
    onnx_images_per_s: float
    relative_diff: float  # max |onnx - torch| / torch logit range on the sample


class OnnxForward(nn.Module):
    """An ONNX Runtime session behind nn.Module's call, so the prediction loop runs either backend."""

    channels_last = False  # ONNX Runtime takes plain NCHW arrays

    def __init__(self, session, input_size: int = 0) -> None:
        super().__init__()
        self.session, self.input = session, session.get_inputs()[0].name
        self.input_size = input_size  # the side the graph computes at (prediction batches are sized by it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.float().contiguous().numpy()})[0])


def torch_forward(model: nn.Module) -> nn.Module:
    """The model as PyTorch predicts fastest on CPU: batch norm folded into the convolutions, channels_last."""
    return folded(model).to(memory_format=torch.channels_last)


def choose_backend(
    model: nn.Module, checkpoint: Path, sample: torch.Tensor, *, n_images: int, wanted: str = "auto",
    cache_dir: Path | None = None, log: Callable[[str], None] = print,
) -> Backend:  # fmt: skip
    """The backend for predicting `n_images` images with `model` (loaded from `checkpoint`); `sample` is a
    normalised batch of the job's own images, for timing and agreement. `wanted` torch|onnx forces one."""
    return choose_backend_at(model, kept_onnx_path(checkpoint, cache_dir), sample, n_images=n_images, wanted=wanted,
                             log=log)  # fmt: skip


def choose_backend_at(
    model: nn.Module, onnx_path: Path, sample: torch.Tensor, *, n_images: int, wanted: str = "auto",
    log: Callable[[str], None] = print, build_min_seconds: float = BUILD_MIN_SECONDS,
) -> Backend:  # fmt: skip
    """`choose_backend` for any module whose ONNX file (and measurement) is kept at `onnx_path`: the name must
    change whenever the module's weights or input shape do (a checkpoint's digest, a backbone's digest). A job
    PyTorch would finish within `build_min_seconds` keeps PyTorch unless a measurement is already kept."""
    if wanted not in BACKENDS:
        raise CnnlabError(f"unknown backend '{wanted}' (choose from: {', '.join(BACKENDS)})")
    if wanted == "torch":
        return Backend("torch", _torch_or_cuda(model), "--backend torch")
    if torch.cuda.is_available() and wanted == "auto":
        return Backend("torch", model, "PyTorch on the GPU (ONNX Runtime runs on the CPU here)")
    if not _onnxruntime_installed():
        if wanted == "onnx":
            missing = [m for m in ONNX_PACKAGES if not installed(m)] or ["onnxruntime"]
            raise CnnlabError(install_hint(missing, "--backend onnx"))
        return Backend("torch", torch_forward(model), "onnxruntime is not installed")
    fast_torch = torch_forward(model)
    known = _read_json(onnx_path.parent / "backend.json").get(_timing_key(onnx_path)) if onnx_path.exists() else None
    if wanted == "auto" and known is None:  # nothing built or measured yet: only worth it for enough work
        seconds = n_images / _quick_images_per_s(fast_torch, sample[:SAMPLE_IMAGES])
        if seconds < build_min_seconds:
            return Backend("torch", fast_torch, f"about {seconds:.1f} s of PyTorch work: too little to pay for "
                                                "building and timing the ONNX Runtime backend")  # fmt: skip
    if wanted == "auto" and known is not None and _pick(None, None, Timing(**known)).name == "torch":
        return _pick(fast_torch, None, Timing(**known))  # measured before: no session needed
    # as many threads as PyTorch uses, so the two are timed alike (both default to one per core)
    onnx = OnnxForward(open_session(onnx_file(model, sample, onnx_path, log), threads=torch.get_num_threads()),
                       input_size=int(getattr(model, "input_size", 0) or 0))  # fmt: skip
    if wanted == "onnx":
        return Backend("onnx", onnx, "--backend onnx")
    return _pick(fast_torch, onnx, _timed(fast_torch, onnx, sample[:SAMPLE_IMAGES], onnx_path))


def choose_backend_unsaved(
    model: nn.Module, sample: torch.Tensor, *, n_images: int, name: str, log: Callable[[str], None] = print
) -> Backend:  # fmt: skip
    """`choose_backend` for a model with no checkpoint file (an ImageNet classifier): its ONNX file is kept in the
    system's temporary folder, named `name`, the weights' digest and the input shape."""
    shape = "x".join(map(str, sample.shape[1:]))
    return choose_backend_at(model, temp_folder() / f"{name}-{weights_digest(model)}-{shape}.onnx", sample,
                             n_images=n_images, log=log)  # fmt: skip


def _pick(fast_torch: nn.Module, onnx: nn.Module, t: Timing) -> Backend:
    onnx_s, torch_s = f"{t.onnx_images_per_s:.0f}", f"{t.torch_images_per_s:.0f}"
    if t.relative_diff > PARITY_TOLERANCE:
        return Backend("torch", fast_torch, f"ONNX Runtime disagrees with PyTorch ({t.relative_diff:.2g} of range)")
    if t.onnx_images_per_s > t.torch_images_per_s:
        return Backend("onnx", onnx, f"ONNX Runtime faster than PyTorch: {onnx_s} vs {torch_s} images/s measured")
    return Backend("torch", fast_torch, f"PyTorch faster than ONNX Runtime: {torch_s} vs {onnx_s} images/s measured")


def _torch_or_cuda(model: nn.Module) -> nn.Module:
    return model if torch.cuda.is_available() else torch_forward(model)


def _onnxruntime_installed() -> bool:
    """ONNX Runtime and what builds its file (cnnlab[export]); without them, PyTorch predicts."""
    return all(installed(m) for m in ONNX_PACKAGES)


def kept_onnx_path(checkpoint: Path, cache_dir: Path | None) -> Path:
    """Where this checkpoint's ONNX file is kept: named by the checkpoint's content, so a retrained best.pt
    never meets a stale file. Without a cache folder (a loose checkpoint), the system's temporary folder."""
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:16]
    return (cache_dir if cache_dir is not None else temp_folder()) / f"predict-{digest}.onnx"


def temp_folder() -> Path:
    return Path(tempfile.gettempdir()) / "cnnlab-backends"


def onnx_file(model: nn.Module, sample: torch.Tensor, path: Path, log: Callable[[str], None]) -> Path:
    """The kept ONNX file of `model` at `path` (see `kept_onnx_path`), exported first when not there yet."""
    if not path.exists():
        started = time.perf_counter()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only run folder: the system's temporary folder instead
            path = temp_folder() / path.name
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # DDP processes may build the same file at once
        example = sample[:2] if len(sample) >= 2 else sample.expand(2, *sample.shape[1:])  # a batch of 1 fixes the
        write_onnx(folded(model), example.float().contiguous(), tmp, {})  # exported batch size at 1 (0/1 specialised)
        tmp.replace(path)  # atomic: a killed build leaves no half file under the kept name
        log(f"built the ONNX Runtime backend in {time.perf_counter() - started:.1f} s ({path})")
    return path


def _timed(fast_torch: nn.Module, onnx: nn.Module, x: torch.Tensor, onnx_path: Path) -> Timing:
    """Both backends' speed on the same batch and their agreement, kept beside the ONNX file per CPU, threads
    and checkpoint."""
    key = _timing_key(onnx_path)
    cache = onnx_path.parent / "backend.json"
    known = _read_json(cache)
    if key in known:
        return Timing(**known[key])
    with torch.inference_mode():
        expected = fast_torch(x.contiguous(memory_format=torch.channels_last)).float()
        got = onnx(x)
    timing = Timing(
        torch_images_per_s=_images_per_s(fast_torch, x.contiguous(memory_format=torch.channels_last)),
        onnx_images_per_s=_images_per_s(onnx, x),
        relative_diff=graph.relative_difference(expected.numpy(), got.numpy()),
    )
    known[key] = asdict(timing)
    try:
        cache.write_text(json.dumps(known, indent=2))
    except OSError:
        pass  # unwritable: measured again next time
    return timing


def _timing_key(onnx_path: Path) -> str:
    cpu = CpuInfo.here()
    return f"{cpu.name}|{cpu.capability}|{torch.get_num_threads()}|{onnx_path.stem}|{SAMPLE_IMAGES}"


def _quick_images_per_s(forward: nn.Module, x: torch.Tensor) -> float:
    """A rough PyTorch speed from one timed pass after a warm-up: enough to tell seconds of work from minutes."""
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        forward(x)
        started = time.perf_counter()
        forward(x)
    return len(x) / max(time.perf_counter() - started, 1e-9)


def _images_per_s(forward: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        forward(x)  # warm-up
        runs, started = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - started < MIN_TIMED_S:
            forward(x)
            runs += 1
    return runs * len(x) / (time.perf_counter() - started)


def _read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
