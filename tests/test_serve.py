"""`cnnlab serve`: the JSON endpoint answers as `cnnlab predict` does, refuses bad uploads with a 4xx and one
line, and the page works in a real browser (Debian's chromium through Playwright) against a real server."""

from __future__ import annotations

import base64
import io
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_report import CHROMIUM, CHROMIUM_ARGS


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _bomb() -> bytes:
    """A PNG whose header claims 20000 x 20000 pixels with almost no data."""
    raw = bytearray(_png(np.zeros((8, 8), np.uint8)))
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4 : ihdr + 12] = struct.pack(">II", 20000, 20000)
    raw[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr : ihdr + 17])))
    return bytes(raw)


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> list[Path]:
    """Six real test digits as PNG files (8x8, scaled from 0..16 to 0..255)."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digits")
    images = load_digits().images[-6:]
    paths = []
    for i, image in enumerate(images):
        path = folder / f"digit-{i}.png"
        path.write_bytes(_png((image * 255 / 16).astype(np.uint8)))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def run_client(digits_cnn_run):
    from fastapi.testclient import TestClient

    from cnnlab.apps.serve import create_app, open_servable

    return TestClient(create_app(open_servable(str(digits_cnn_run)), max_upload_mb=0.5, top_k=10))


@pytest.fixture(scope="module")
def imagenet_client():
    from fastapi.testclient import TestClient

    from cnnlab.apps.serve import create_app, open_servable

    return TestClient(create_app(open_servable("efficientnet_lite0"), max_upload_mb=10))


def _post(client, data: bytes, name: str = "image.png"):
    return client.post("/predict", files={"file": (name, data, "application/octet-stream")})


def test_the_endpoint_answers_as_cnnlab_predict_does(run_client, digits_cnn_run, digit_files):
    from cnnlab.predict.infer import predict_images

    classes, expected = predict_images(digits_cnn_run / "best.pt", digit_files, backend="torch", log=lambda _: None)
    for path, want in zip(digit_files, expected, strict=True):
        got = _post(run_client, path.read_bytes(), path.name)
        assert got.status_code == 200, got.text
        top = got.json()["top"]
        assert len(top) == 10 and [t["probability"] for t in top] == sorted(
            [t["probability"] for t in top], reverse=True
        )
        served = {t["label"]: t["probability"] for t in top}
        assert np.allclose([served[c] for c in classes], want.probabilities, atol=1e-4)


def test_the_overlay_is_a_gradcam_picture_of_the_upload(run_client, digit_files):
    body = _post(run_client, digit_files[0].read_bytes()).json()
    assert body["gradcam_note"].startswith(f"Grad-CAM for '{body['top'][0]['label']}'")
    png = base64.b64decode(body["gradcam"].removeprefix("data:image/png;base64,"))
    overlay = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert overlay.shape[:2] == (224, 224)
    assert overlay.std(axis=(0, 1)).max() > 10  # a map with structure, not one flat colour


def test_a_photo_gets_its_imagenet_class_and_the_dog_apps_answer(imagenet_client):
    from skimage import data

    coffee = _post(imagenet_client, _jpeg(data.coffee()), "coffee.jpg").json()
    assert coffee["top"][0]["label"] == "espresso" and coffee["top"][0]["probability"] > 0.5
    assert coffee["dogapp"]["kind"] == "neither"
    astronaut = _post(imagenet_client, _jpeg(data.astronaut()), "astronaut.jpg").json()
    assert astronaut["dogapp"]["kind"] == "human" and astronaut["dogapp"]["faces"] >= 1


def test_bad_uploads_get_a_4xx_and_one_line(run_client):
    cases = {
        "text renamed .jpg": (_post(run_client, b"hello, not a picture", "notes.jpg"), 415, "not an image"),
        "empty file": (_post(run_client, b"", "empty.png"), 415, "empty file"),
        "truncated PNG": (_post(run_client, _png(np.zeros((64, 64), np.uint8))[:60]), 415, "not an image"),
        "decompression bomb": (_post(run_client, _bomb(), "bomb.png"), 413, "decompression bomb"),
        "over the upload limit": (_post(run_client, b"\0" * (2**20)), 413, "larger than 0.5 MB"),
        "no file field": (run_client.post("/predict", data={"x": "1"}), 422, "field named 'file'"),
    }
    for case, (response, status, words) in cases.items():
        assert response.status_code == status, case
        error = response.json()["error"]
        assert words in error and "\n" not in error and "Traceback" not in error, case


def test_an_upload_streamed_without_length_is_cut_at_the_limit(run_client):
    def chunks():
        for _ in range(64):
            yield b"\0" * 65536  # 4 MB in all, no Content-Length

    boundary = "cnnlab"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'.encode()

    def body():
        yield head
        yield from chunks()
        yield f"\r\n--{boundary}--\r\n".encode()

    response = run_client.post(
        "/predict", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 413 and "larger than" in response.json()["error"]


def test_concurrent_requests_share_one_model_and_agree(run_client, digit_files):
    uploads = [p.read_bytes() for p in digit_files] * 4
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda d: _post(run_client, d).json(), uploads))
    alone = [_post(run_client, d).json() for d in uploads[:6]]
    for i, body in enumerate(bodies):
        assert body["top"] == alone[i % 6]["top"] and body["gradcam"] == alone[i % 6]["gradcam"]


def test_an_exported_onnx_file_is_served_without_gradcam(digits_cnn_run, digit_files, cli, tmp_path):
    from fastapi.testclient import TestClient

    from cnnlab.apps.serve import create_app, open_servable

    onnx = tmp_path / "digits.onnx"
    code, _, err = cli("export", digits_cnn_run, "--output", onnx)
    assert code == 0, err
    served = TestClient(create_app(open_servable(str(onnx)))).post(
        "/predict", files={"file": ("d.png", digit_files[0].read_bytes(), "image/png")}
    )
    from_run = _post(TestClient(create_app(open_servable(str(digits_cnn_run)))), digit_files[0].read_bytes())
    assert served.status_code == 200
    assert served.json()["top"][0]["label"] == from_run.json()["top"][0]["label"]
    assert served.json()["gradcam"] is None and "ONNX" in served.json()["gradcam_note"]


def test_serve_refuses_what_it_cannot_serve_in_one_line(cli, digits_cnn_run, tmp_path):
    code, _, err = cli("serve", tmp_path / "nothing-here")
    assert code == 2 and "not a run folder, an .onnx file or a pretrained backbone" in err
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.yaml").write_text((digits_cnn_run / "config.yaml").read_text())
    code, _, err = cli("serve", untrained)
    assert code == 2 and "best.pt is missing" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        code, _, err = cli("serve", digits_cnn_run, "--port", busy.getsockname()[1])
    assert code == 2 and "in use" in err and len(err.strip().splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """`cnnlab serve efficientnet_lite0` in a subprocess on a free loopback port, uploads capped at 1 MB."""
    import httpx

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "cnnlab.cli",
        "serve",
        "efficientnet_lite0",
        "--port",
        str(port),
        "--max-upload-mb",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stdout.read()}")
            try:
                httpx.get(url + "info", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium not installed (make test installs it as root)")
def test_the_page_in_a_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    from skimage import data

    coffee, text = tmp_path / "coffee.jpg", tmp_path / "notes.jpg"
    coffee.write_bytes(_jpeg(data.coffee()))
    text.write_text("this is not a picture")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, chromium_sandbox=False)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server)
        page.set_input_files("#file", str(coffee))
        expect(page.locator("#bars .row").first).to_have_attribute("data-label", "espresso", timeout=60_000)
        overlay = page.locator("#overlay")
        expect(overlay).to_be_visible()
        assert overlay.evaluate("img => img.complete && img.naturalWidth") == 224
        assert "neither a dog nor a human" in page.locator("#dogapp").inner_text()
        page.set_input_files("#file", str(text))
        expect(page.locator("#error")).to_contain_text("not an image", timeout=30_000)
        expect(page.locator("#result")).to_be_hidden()
        big = page.request.post(server + "predict", multipart={
            "file": {"name": "big.jpg", "mimeType": "image/jpeg", "buffer": b"\0" * (2 * 2**20)}})  # fmt: skip
        assert big.status == 413 and "larger than 1 MB" in big.json()["error"]
        browser.close()
    assert not errors
