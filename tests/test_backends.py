"""Prediction backends: `auto` takes the faster of PyTorch and ONNX Runtime only where they agree, keeps the
ONNX file per checkpoint, does not build it for a handful of images, and `cnnlab benchmark` reports every
backend and judges a latency budget."""

import json

import pytest
import torch

from cnnlab.predict import backends as B


def _predicted(run):
    return [line.split(",")[2] for line in (run / "predictions.csv").read_text().splitlines()[1:]]


def test_every_backend_scores_the_test_split_alike_and_the_onnx_file_is_kept(digits_cnn_run, cli):
    code, out, err = cli("evaluate", digits_cnn_run, "--backend", "onnx")
    assert code == 0, err
    onnx_eval, onnx_labels = json.loads((digits_cnn_run / "eval.json").read_text()), _predicted(digits_cnn_run)
    assert onnx_eval["backend"]["name"] == "onnx"
    kept = list((digits_cnn_run / "cache").glob("predict-*.onnx"))
    assert len(kept) == 1  # named by the checkpoint's content
    code, out, err = cli("evaluate", digits_cnn_run, "--backend", "torch")
    assert code == 0, err
    torch_eval = json.loads((digits_cnn_run / "eval.json").read_text())
    assert torch_eval["backend"]["name"] == "torch" and torch_eval["accuracy"] >= 0.85  # real digits
    assert _predicted(digits_cnn_run) == onnx_labels and torch_eval["accuracy"] == onnx_eval["accuracy"]
    code, out, err = cli("evaluate", digits_cnn_run)  # auto: the kept file is reused, not built again
    assert code == 0 and "built the ONNX Runtime backend" not in out
    assert "prediction backend: " in out and _predicted(digits_cnn_run) == onnx_labels
    assert json.loads((digits_cnn_run / "eval.json").read_text())["backend"]["why"]


def test_onnx_backend_built_from_one_image_serves_any_batch(tmp_path):
    pytest.importorskip("onnxruntime")
    from cnnlab.models import create_model
    from cnnlab.predict.graph import PARITY_TOLERANCE, relative_difference

    model = create_model("efficientnet_lite0", num_classes=3, in_channels=3, image_size=32, strategy="feature-extract")
    model.input_size = 32
    one = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    chosen = B.choose_backend_at(model.eval(), tmp_path / "one.onnx", one, n_images=1, wanted="onnx", log=print)
    batch = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # a batch of one used to fix
    with torch.inference_mode():  # the exported batch size at 1 for this backbone (the exporter failed)
        expected, got = model(batch), chosen.forward(batch)
    assert chosen.name == "onnx" and got.shape == (5, 3)
    assert relative_difference(expected.numpy(), got.numpy()) <= PARITY_TOLERANCE


def test_auto_does_not_build_the_onnx_file_for_a_few_images(digits_cnn_run, tmp_path, cli):
    from helpers import write_digit_folder

    for kept in (digits_cnn_run / "cache").glob("predict-*"):
        kept.unlink()
    images = write_digit_folder(tmp_path / "images", classes=(0, 1), per_class=2, size=8)
    code, out, err = cli("predict", digits_cnn_run, images)
    assert code == 0 and len(out.strip().splitlines()) == 4
    assert "prediction backend: torch (about " in err and "s of PyTorch work: too little to pay" in err
    assert not list((digits_cnn_run / "cache").glob("predict-*.onnx"))


def test_auto_takes_onnx_only_when_it_is_faster_and_agrees():
    model, onnx = torch.nn.Identity(), torch.nn.Identity()
    faster = B.Timing(torch_images_per_s=100, onnx_images_per_s=300, relative_diff=1e-7)
    slower = B.Timing(torch_images_per_s=300, onnx_images_per_s=100, relative_diff=1e-7)
    disagrees = B.Timing(torch_images_per_s=100, onnx_images_per_s=300, relative_diff=1e-2)
    assert B._pick(model, onnx, faster).name == "onnx"
    assert B._pick(model, onnx, slower).name == "torch"
    chosen = B._pick(model, onnx, disagrees)
    assert chosen.name == "torch" and "disagrees" in chosen.why


def test_an_unknown_backend_is_one_clear_line(digits_cnn_run, cli):
    code, out, err = cli("evaluate", digits_cnn_run, "--backend", "tensorrt")
    assert code == 2 and "unknown backend 'tensorrt'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_benchmark_reports_each_backend_and_judges_the_latency_budget(digits_cnn_run, cli, monkeypatch):
    from cnnlab.export import benchmark

    monkeypatch.setattr(benchmark, "LATENCY_S", 0.2)  # the table's shape, not its precision, is tested here
    monkeypatch.setattr(benchmark, "THROUGHPUT_S", 0.05)
    for extra in ([], ["--int8", "--calibration", "100"]):  # the fp32 file and the int8 file made from it
        code, out, err = cli("export", digits_cnn_run, *extra, "--force")
        assert code == 0, err
    code, out, err = cli("benchmark", digits_cnn_run, "--latency-budget", "100000")
    assert code == 0, err
    result = json.loads((digits_cnn_run / "benchmark.json").read_text())
    rows = {r["backend"]: r for r in result["rows"]}
    assert set(rows) == {"eager", "torch", "onnx", "onnx-file", "onnx-int8"}
    assert all(r["p95_ms"] >= r["p50_ms"] > 0 and r["images_per_s"] > 0 and r["meets_budget"] for r in rows.values())
    assert result["default"]["backend"] in rows and "met by eager, torch, onnx, onnx-file, onnx-int8" in out
    threads = torch.get_num_threads()
    code, out, err = cli("benchmark", digits_cnn_run, "--latency-budget", "0", "--threads", "1")
    assert torch.get_num_threads() == threads  # the caller's setting comes back
    assert code == 1 and "misses the latency budget" in err and "met by none" in out
    assert json.loads((digits_cnn_run / "benchmark.json").read_text())["threads"] == 1


def test_without_onnxruntime_auto_uses_torch_and_onnx_is_one_clear_line(digits_cnn_run, cli, monkeypatch):
    monkeypatch.setattr(B, "_onnxruntime_installed", lambda: False)
    code, out, err = cli("evaluate", digits_cnn_run)
    assert code == 0 and "prediction backend: torch (onnxruntime is not installed)" in out, err
    code, _, err = cli("evaluate", digits_cnn_run, "--backend", "onnx")
    assert code == 2 and "--backend onnx needs onnxruntime" in err and len(err.strip().splitlines()) == 1
