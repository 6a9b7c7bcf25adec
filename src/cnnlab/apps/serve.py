"""`cnnlab serve`: a web page and a JSON endpoint to try a model on one image.

Built on FastAPI (Starlette underneath) and uvicorn: two routes need little, but FastAPI gives the JSON endpoint
a typed signature and an OpenAPI page at /docs for users calling it from code, and its TestClient lets tests
drive the app without a socket. The page is one self-contained HTML file (no CDN: it works offline).

Safe by default:
- binds to 127.0.0.1; another host is a choice the user makes and is warned about (there is no login);
- an upload is limited in bytes (checked on Content-Length and again while the body streams: 413) and in
  pixels (the header's pixel count, before decoding: 413); it is decoded by content from memory and never
  written anywhere, so no user-chosen path is ever opened;
- every error is JSON `{"error": ...}` with a 4xx code (5xx only for a fault of ours), never a traceback;
- the model is loaded once; requests run one at a time behind a lock (Grad-CAM hooks a layer of the shared
  model, and two cores gain nothing from running two forward passes at once).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import File, Request, UploadFile  # at module level: FastAPI reads the endpoint's annotations here

from cnnlab.apps.dogapp import BACKBONE, DogApp
from cnnlab.data.images import MAX_PIXELS, TooManyPixels, UnreadableImage, decode_array
from cnnlab.errors import CnnlabError
from cnnlab.explain import attributions as A
from cnnlab.explain import layers as L
from cnnlab.explain.pictures import heatmap_overlay
from cnnlab.models.checkpoint import InputSpec, load_checkpoint
from cnnlab.models.pretrained import OFFLINE, TORCHVISION, imagenet_class_names, is_pretrained_name
from cnnlab.predict.backends import SERVED_IMAGES, choose_backend, choose_backend_unsaved
from cnnlab.predict.infer import imagenet_classifier, mean_of_views, model_from_checkpoint, predict_logits
from cnnlab.predict.onnx import NEEDED, onnx_logits, open_session
from cnnlab.runs import RunFile, open_run, recorded_tta

DEFAULT_MAX_UPLOAD_MB = 10.0
TOP_K = 5
LOG = logging.getLogger("cnnlab.serve")


@dataclass
class Servable:
    """What the page serves: class names, how an image becomes input, a forward pass, and the extras."""

    name: str  # shown on the page
    kind: str  # "run", "backbone" or "onnx"
    classes: list[str]
    prep: Any  # engine.checkpoint.InputSpec
    probabilities: Callable[[np.ndarray], np.ndarray]  # uint8 [1, C, H, W] -> [classes]
    cam: Callable[[np.ndarray, int], tuple[np.ndarray, str]] | None = None  # (image, class) -> (map, layer)
    dogapp: Any = None  # apps.dogapp.DogApp
    max_pixels: int | None = None
    model: Any = None  # the torch model behind `probabilities`, when there is one (shared with the dog app)
    forward: Any = None  # the prediction backend running `model` (shared with the dog app)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()


def open_servable(
    target: str, *, dogapp: bool = False, weights: str | None = None, max_pixels: int | None = None,
    log: Callable[[str], None] = print,
) -> Servable:  # fmt: skip
    """A run folder, an exported .onnx file or a pretrained backbone name, ready to answer; anything else is
    one clear error naming what is accepted."""
    path = Path(target)
    if path.is_dir():
        servable = _run(path, log)
    elif path.suffix.lower() == ".onnx":
        servable = _onnx(path)
    elif is_pretrained_name(target):
        servable = _backbone(target, weights, log)
        dogapp = True  # an ImageNet classifier: the dog app's answer comes with it
    else:
        names = ", ".join(sorted({*OFFLINE, *TORCHVISION}))
        raise CnnlabError(
            f"cannot serve '{target}': not a run folder, an .onnx file or a pretrained backbone "
            f"(pass a folder made by cnnlab train, a file made by cnnlab export, or one of: {names})"
        )
    if dogapp:
        breeds = path if servable.kind == "run" else None  # a run trained on breeds names them
        shared = (servable.model, servable.prep) if servable.kind == "backbone" and target == BACKBONE else None
        servable.dogapp = DogApp(breeds_run=breeds, weights=weights if shared else None, classifier=shared,
                                 forward=servable.forward if shared else None)  # fmt: skip
    servable.max_pixels = max_pixels
    return servable


def _run(run_dir: Path, log: Callable[[str], None]) -> Servable:
    open_run(run_dir)
    path = run_dir / RunFile.BEST
    if not path.is_file():
        raise CnnlabError(f"{path} is missing (train the run first, or resume it: cnnlab train --resume)")
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    tta = bool(recorded_tta(run_dir))  # as the run was evaluated (and as its exported file predicts)
    sample = _sample(ckpt.preprocessing)
    backend = choose_backend(model, path, sample, n_images=SERVED_IMAGES, cache_dir=run_dir / "cache", log=log)
    log(f"prediction backend: {backend.name} ({backend.why})")
    return _torch_servable(run_dir.name, "run", model, list(ckpt.class_names), ckpt.preprocessing, tta=tta,
                           forward=backend.forward)  # fmt: skip


def _backbone(name: str, weights: str | None, log: Callable[[str], None]) -> Servable:
    model, prep = imagenet_classifier(name, weights)
    backend = choose_backend_unsaved(model, _sample(prep), n_images=SERVED_IMAGES, name=f"imagenet-{name}", log=log)
    log(f"prediction backend: {backend.name} ({backend.why})")
    return _torch_servable(f"{name} (ImageNet)", "backbone", model, imagenet_class_names(), prep,
                           forward=backend.forward)  # fmt: skip


def _sample(prep: InputSpec) -> torch.Tensor:
    """Two normalised random images of the model's input shape: what the backends are timed and compared on."""
    pixels = torch.randint(0, 256, (2, prep.channels, prep.image_size, prep.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    return prep.normalization().apply(pixels)


def _torch_servable(
    name: str, kind: str, model, classes: list[str], prep, *, forward: torch.nn.Module, tta: bool = False
) -> Servable:  # fmt: skip
    """Predictions on `forward` (the measured backend), Grad-CAM on a PyTorch copy of `model`."""
    norm = prep.normalization()
    twin = L.explainable(model)  # one copy serves predictions and Grad-CAM (its activations are not in place)
    x = norm.apply(torch.zeros(1, prep.channels, prep.image_size, prep.image_size, dtype=torch.uint8)).float()
    layers = L.trace_layers(twin, x)
    cam = None
    if any(layer.conv for layer in layers):  # an MLP has no Grad-CAM; the page says so
        cam_layer = L.gradcam_layer(layers)
        cam_module = L.module(twin, cam_layer.name)

        def cam(image: np.ndarray, target: int) -> tuple[np.ndarray, str]:
            xi = norm.apply(torch.from_numpy(image)).float()
            heat = A.attribute(twin, xi, torch.tensor([target]), "gradcam", layer=cam_module, settings=A.Settings())
            return heat[0].numpy(), cam_layer.name

    def probabilities(image: np.ndarray) -> np.ndarray:
        logits = predict_logits(forward, torch.from_numpy(image), norm)
        if tta:
            logits = mean_of_views(logits, predict_logits(forward, torch.from_numpy(image), norm, mirror=True))
        return logits.softmax(1)[0].numpy()

    return Servable(name, kind, classes, prep, probabilities, cam, model=twin, forward=forward)


def _onnx(path: Path) -> Servable:
    session = open_session(path)
    meta = session.get_modelmeta().custom_metadata_map
    missing = [k for k in NEEDED if k not in meta]
    if missing:
        raise CnnlabError(f"{path} lacks cnnlab's preprocessing metadata ({', '.join(missing)}); export it with "
                          "cnnlab export")  # fmt: skip
    mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    prep = InputSpec(int(meta["image_size"]), int(meta["channels"]), tuple(mean), tuple(std), float(meta["crop_pct"]))
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)

    def probabilities(image: np.ndarray) -> np.ndarray:
        z = onnx_logits(session, np.ascontiguousarray((image.astype(np.float32) / 255 - m) / s), batch=1)[0]
        e = np.exp(z - z.max())
        return e / e.sum()

    return Servable(path.name, "onnx", json.loads(meta["class_names"]), prep, probabilities)


class BadUpload(Exception):
    """An upload the server refuses: the HTTP status and one line for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def answer(servable: Servable, data: bytes, *, filename: str = "upload", top_k: int = TOP_K) -> dict[str, Any]:
    """The page's answer for one uploaded image: top-k classes, the Grad-CAM overlay (a PNG data URL) for the
    top class, and the dog app's answer when it is on. `BadUpload` (415/413) when the bytes are not an image
    the server takes."""
    p = servable.prep
    name = Path(filename or "upload").name[:100]  # shown, never opened
    try:
        image = decode_array(data, size=p.image_size, channels=p.channels, crop_pct=p.crop_pct,
                             max_pixels=servable.max_pixels or MAX_PIXELS)[0][None]  # fmt: skip
    except TooManyPixels as exc:
        raise BadUpload(413, f"{name}: {exc}") from exc
    except UnreadableImage as exc:
        raise BadUpload(415, f"{name} is not an image cnnlab can read: {exc} (upload a JPEG, PNG, WebP, ...)") from exc
    with servable.lock:
        probs = servable.probabilities(image)
        order = np.argsort(probs)[::-1][: max(1, top_k)]
        result: dict[str, Any] = {
            "model": servable.name,
            "file": name,
            "top": [{"label": servable.classes[k], "probability": round(float(probs[k]), 6)} for k in order],
        }
        result.update(_gradcam(servable, image, int(order[0])))
        if servable.dogapp is not None:
            a = servable.dogapp.answer_bytes(name, data)
            result["dogapp"] = {"kind": a.kind, "sentence": a.sentence().split(": ", 1)[1], "faces": len(a.faces),
                                "breeds": [{"label": b, "probability": round(q, 6)} for b, q in a.breeds]}  # fmt: skip
    return result


def _gradcam(servable: Servable, image: np.ndarray, target: int) -> dict[str, Any]:
    if servable.cam is None:
        why = "an ONNX file has no gradients" if servable.kind == "onnx" else "the model has no convolution layer"
        return {"gradcam": None, "gradcam_note": f"no Grad-CAM: {why}"}
    heat, layer = servable.cam(image, target)
    buffer = io.BytesIO()
    heatmap_overlay(image[0], heat).save(buffer, format="PNG")
    return {"gradcam": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
            "gradcam_note": f"Grad-CAM for '{servable.classes[target]}' at layer {layer}"}  # fmt: skip


def create_app(servable: Servable, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, top_k: int = TOP_K):
    """The FastAPI app: GET / (the page), GET /info, POST /predict (multipart field `file`), GET /docs."""
    from fastapi import FastAPI  # optional heavy import: FastAPI (the web page only)
    from fastapi.exceptions import RequestValidationError  # optional heavy import: FastAPI (the web page only)
    from fastapi.responses import HTMLResponse, JSONResponse  # optional heavy import: FastAPI (the web page only)
    from starlette.exceptions import HTTPException  # optional heavy import: Starlette (the web page only)

    limit = int(max_upload_mb * 1024 * 1024)
    app = FastAPI(title="cnnlab serve", description=f"Try {servable.name} on an image.")
    app.add_middleware(UploadLimit, max_bytes=limit)
    page = _page(servable, limit, top_k)
    info = {
        "model": servable.name, "kind": servable.kind, "classes": servable.classes,
        "image_size": servable.prep.image_size, "channels": servable.prep.channels, "max_upload_bytes": limit,
        "gradcam": servable.cam is not None, "dogapp": servable.dogapp is not None,
    }  # fmt: skip

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/info")
    def get_info() -> dict[str, Any]:
        return info

    @app.post("/predict")
    def predict(file: UploadFile = File(..., description="the image")) -> dict[str, Any]:
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, _too_large(limit))
        try:
            return answer(servable, data, filename=file.filename or "upload", top_k=top_k)
        except BadUpload as exc:
            raise HTTPException(exc.status, str(exc)) from exc

    @app.exception_handler(HTTPException)
    def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    def form_error(_request: Request, _exc: RequestValidationError) -> JSONResponse:
        why = "send the image as a multipart form field named 'file' (curl -F file=@photo.jpg URL/predict)"
        return JSONResponse({"error": why}, status_code=422)

    @app.exception_handler(Exception)
    def fault(_request: Request, exc: Exception) -> JSONResponse:
        LOG.exception("request failed")  # the traceback stays in the server's log, not the response
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server's log"}, status_code=500)

    return app


def _too_large(limit: int) -> str:
    return f"upload larger than {limit / 2**20:g} MB (send a smaller image, or start the server with --max-upload-mb)"


class UploadLimit:
    """ASGI middleware: a body over `max_bytes` gets 413, decided on Content-Length when it is sent, and
    otherwise counted as the body streams in (chunked uploads), so no oversized body is ever held."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                from starlette.exceptions import HTTPException  # optional heavy import: Starlette (the web page only)

                raise HTTPException(413, _too_large(self.max_bytes))
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope, receive, send) -> None:
        """Read and drop the body (up to 8x the limit) before answering: a browser still sending reports a
        broken connection instead of the 413 when the server answers early."""
        from starlette.responses import JSONResponse  # optional heavy import: Starlette (the web page only)

        drained, more = 0, True
        while more and drained <= 8 * self.max_bytes:
            message = await receive()
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        await JSONResponse({"error": _too_large(self.max_bytes)}, status_code=413)(scope, receive, send)


def _page(servable: Servable, limit: int, top_k: int) -> str:
    from jinja2 import Environment  # optional heavy import: Jinja2 (HTML rendering only)

    template = (files("cnnlab.apps") / "templates" / "serve.html.j2").read_text(encoding="utf-8")
    return Environment(autoescape=True).from_string(template).render(
        model=servable.name, kind=servable.kind, classes=len(servable.classes), limit_mb=f"{limit / 2**20:g}",
        limit=limit, top_k=top_k, gradcam=servable.cam is not None, dogapp=servable.dogapp is not None,
    )  # fmt: skip


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, made here so that a port in use is one clear error (and no race with uvicorn)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port left in TIME_WAIT is free; a listener is not
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "in use" if exc.errno == 98 else exc.strerror
        raise CnnlabError(
            f"cannot listen on {host}:{port}: {why} (pass another --port, or stop the other server)"
        ) from exc
    sock.listen(128)
    return sock


def serve(servable: Servable, sock: socket.socket, *, max_upload_mb: float, top_k: int = TOP_K,
          log: Callable[[str], None] = print) -> None:  # fmt: skip
    """Run the page on `sock` (from `bind`, made before the model loads) until Ctrl+C."""
    import uvicorn  # optional heavy import: uvicorn (the web page only)

    host = sock.getsockname()[0]
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"warning: --host {host} makes the page reachable from other machines; it has no login")
    app = create_app(servable, max_upload_mb=max_upload_mb, top_k=top_k)
    shown = f"[{host}]" if ":" in host else host
    log(f"serving {servable.name} on http://{shown}:{sock.getsockname()[1]}/ (JSON: POST /predict; Ctrl+C stops)")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


def serve_target(
    target: str, *, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 10.0,
    max_megapixels: float = 89.0, top_k: int = TOP_K, dogapp: bool = False, weights: str | None = None,
    log: Callable[[str], None] = print,
) -> None:  # fmt: skip
    """`cnnlab serve`: bind first (a port in use fails before the model loads), open the target, serve."""
    sock = bind(host, port)
    try:
        servable = open_servable(target, dogapp=dogapp, weights=weights, max_pixels=int(max_megapixels * 1e6),
                                 log=log)  # fmt: skip
        serve(servable, sock, max_upload_mb=max_upload_mb, top_k=top_k, log=log)
    finally:
        sock.close()
