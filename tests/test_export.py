"""`cnnlab export`: an ONNX file that predicts as the run does, carries its preprocessing, and is only
written after a passing parity check; bad requests are one clear line and leave nothing behind."""

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from cnnlab.errors import CnnlabError
from cnnlab.export import exporter as E
from cnnlab.export import int8 as Q


def test_export_predicts_as_the_run_and_carries_its_preprocessing(digits_cnn_run, tmp_path):
    import onnx

    from cnnlab.models.checkpoint import load_checkpoint

    out = tmp_path / "digits.onnx"
    result = E.export_run(digits_cnn_run, output=out, log=lambda _: None)
    assert result["passed"] and result["same_argmax"] == 1.0 and result["relative_diff"] <= E.PARITY_TOLERANCE
    assert result["accuracy_exported"] == result["accuracy_torch"] >= 0.85  # a real model: digits at 8x8 px
    assert json.loads((digits_cnn_run / "export.json").read_text())["digits.onnx"] == result
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    ckpt = load_checkpoint(digits_cnn_run / "best.pt")
    assert json.loads(meta["class_names"]) == list(ckpt.class_names)
    assert (int(meta["image_size"]), int(meta["channels"])) == (ckpt.preprocessing.image_size, 1)
    assert json.loads(meta["mean"]) == pytest.approx(list(ckpt.preprocessing.mean))
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}  # folded into the convolutions
    x = np.random.default_rng(0).normal(size=(7, 1, 8, 8)).astype(np.float32)
    assert E.onnx_logits(out, x).shape == (7, 10) and E.onnx_logits(out, x[:3]).shape == (3, 10)  # any batch


def test_a_failed_parity_check_writes_nothing(digits_cnn_run, tmp_path, monkeypatch):
    monkeypatch.setattr(E, "PARITY_TOLERANCE", -1.0)
    (digits_cnn_run / "export.json").unlink(missing_ok=True)
    with pytest.raises(CnnlabError, match="parity check failed"):
        E.export_run(digits_cnn_run, output=tmp_path / "m.onnx", log=lambda _: None)
    assert list(tmp_path.iterdir()) == [] and not (digits_cnn_run / "export.json").exists()


def test_bad_export_requests_are_one_clear_line(digits_cnn_run, tmp_path, cli):
    existing = tmp_path / "mine.onnx"
    existing.write_text("a user's file")
    cases = [
        (["export", digits_cnn_run, "--output", existing], "already exists"),
        (["export", digits_cnn_run, "--format", "tflite", "--output", tmp_path / "x"], "unknown export format"),
        (["export", tmp_path / "nowhere"], "run folder not found"),
    ]
    for args, message in cases:
        code, _, err = cli(*args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert existing.read_text() == "a user's file"


def test_a_run_without_a_checkpoint_is_one_clear_line(digits_cnn_run, tmp_path, cli):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(digits_cnn_run, bare, ignore=shutil.ignore_patterns("*.pt", "*.onnx"))
    code, _, err = cli("export", bare)
    assert code == 2 and "best.pt is missing" in err and len(err.strip().splitlines()) == 1
    assert not (bare / "model.onnx").exists()


def test_a_damaged_onnx_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 not a model")
    with pytest.raises(CnnlabError, match="not a readable ONNX model"):
        E.onnx_logits(bad, np.zeros((1, 1, 8, 8), np.float32))


@pytest.mark.slow
def test_an_exported_file_predicts_as_the_run_without_importing_torch(digits_cnn_run, tmp_path, cli):
    """`cnnlab predict model.onnx IMAGES` runs on ONNX Runtime alone and gives the run's labels."""
    import subprocess
    import sys

    from helpers import write_digit_folder

    model = tmp_path / "digits.onnx"
    E.export_run(digits_cnn_run, output=model, log=lambda _: None)
    images = write_digit_folder(tmp_path / "images", classes=tuple(range(10)), per_class=3, size=8)
    script = (
        "import sys\nfrom cnnlab.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script, "predict", str(model), str(images)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-1500:]
    code, out, err = cli("predict", digits_cnn_run, images)
    assert code == 0, err

    def labels(text):
        return [line.split(": ")[1].split(" ")[0] for line in text.strip().splitlines()]

    assert len(labels(done.stdout)) == 30 and labels(done.stdout) == labels(out)


def test_an_onnx_file_without_cnnlab_metadata_is_a_clear_error(tmp_path, cli):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(img)
    code, _, err = cli("predict", path, img)
    assert code == 2 and "lacks cnnlab's preprocessing metadata" in err and len(err.strip().splitlines()) == 1


def test_int8_is_calibrated_on_validation_images_only_and_keeps_accuracy(digits_cnn_run, tmp_path, cli):
    from cnnlab.data.splits import load_splits
    from cnnlab.predict.infer import open_trained_run

    out = tmp_path / "digits.int8.onnx"
    result = E.export_run(digits_cnn_run, output=out, int8=True, calibration=100, log=lambda _: None)
    q = result["int8"]
    splits = load_splits(digits_cnn_run / "splits.json", open_trained_run(digits_cnn_run).source)
    used = set(q["calibration_indices"])
    assert len(used) == 100 and used <= set(splits["valid"].tolist()) and not used & set(splits["test"].tolist())
    assert q["accuracy_delta"] >= -Q.INT8_MAX_DROP and q["accuracy_int8"] >= 0.85
    held_out = len(splits["valid"]) + len(splits["test"])  # agreement is judged on every held-out image
    assert q["agreement_images"] == held_out and q["label_agreement"] >= Q.INT8_MIN_AGREEMENT
    low, high = q["agreement_interval"]
    assert low <= q["label_agreement"] <= high and high - low < 0.03
    assert json.loads((digits_cnn_run / "export.json").read_text())[out.name]["int8"] == q
    images = tmp_path / "images"
    from helpers import write_digit_folder

    write_digit_folder(images, classes=(0, 1, 2), per_class=2, size=8)
    code, stdout, err = cli("predict", out, images)  # the int8 file keeps the preprocessing metadata
    assert code == 0 and len(stdout.strip().splitlines()) == 6, err


def test_int8_output_layer_is_refitted_on_training_images_towards_the_fp32_logits(digits_cnn_run, tmp_path):
    """The refit is fitted on training images only, and on the held-out images (never seen by it) the int8 file's
    logits come closer to the fp32 file's than before it, in a graph with test-time flips inside."""
    from cnnlab.data.splits import load_splits
    from cnnlab.predict.infer import open_trained_run
    from cnnlab.predict.onnx import onnx_logits

    fp32 = tmp_path / "fp32.onnx"
    E.export_run(digits_cnn_run, output=fp32, tta=True, log=lambda _: None)
    run = open_trained_run(digits_cnn_run)
    splits = load_splits(digits_cnn_run / "splits.json", run.source)
    norm = run.checkpoint.preprocessing.normalization()
    int8 = Q.quantized(fp32, E._normalised(run.source.images, splits["valid"][:100], norm), {"quantization": "int8"})
    held_out = E._normalised(run.source.images, np.concatenate([splits["valid"], splits["test"]]), norm)
    expected = onnx_logits(fp32, held_out)
    before = np.abs(onnx_logits(int8, held_out) - expected).mean()
    train = E._normalised_batches(run.source.images, splits["train"], norm)
    done = Q.match_output_layer(int8, fp32, train)
    after = np.abs(onnx_logits(int8, held_out) - expected).mean()
    assert done["refit"] and done["images"] == len(splits["train"]) and after < before
    notes = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert "refitted to the fp32 file's logits" in notes["quantization"]


def test_int8_refit_leaves_an_unusual_output_layer_and_too_few_images_alone(digits_cnn_run, tmp_path):
    """Only a plain Gemm used once is refitted (a MatMul, a transposed input or a shared layer is left as trained),
    and with fewer images than its cross-validation needs the int8 file stays byte for byte as it was."""

    def graph(*nodes) -> onnx.ModelProto:
        return helper.make_model(helper.make_graph(list(nodes), "g", [], []))

    plain = helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)
    assert Q._output_layer(graph(plain)) == plain  # a copy of it, inside the graph
    assert Q._output_layer(graph(helper.make_node("MatMul", ["f", "w"], ["y"]))) is None
    assert Q._output_layer(graph(helper.make_node("Gemm", ["f", "w", "b"], ["y"], transA=1, transB=1))) is None
    twice = helper.make_node("Gemm", ["g", "w", "b"], ["z"], transB=1)
    assert Q._output_layer(graph(plain, twice)) is None
    fp32 = tmp_path / "fp32.onnx"
    E.export_run(digits_cnn_run, output=fp32, log=lambda _: None)
    int8 = tmp_path / "int8.onnx"
    int8.write_bytes(fp32.read_bytes())
    few = [np.zeros((Q.REFIT_FOLDS, 1, 8, 8), np.float32)]  # 4 images: fewer than two per fold
    assert Q.match_output_layer(int8, fp32, few) == {"refit": False, "why": f"{Q.REFIT_FOLDS} training images"}
    assert int8.read_bytes() == fp32.read_bytes()


def test_an_int8_file_that_loses_accuracy_is_refused_and_nothing_is_written(digits_cnn_run, tmp_path, monkeypatch):
    monkeypatch.setattr(Q, "INT8_MAX_DROP", -1.0)  # any int8 file now counts as too inaccurate
    with pytest.raises(CnnlabError, match="int8 parity check failed"):
        E.export_run(digits_cnn_run, output=tmp_path / "q.onnx", int8=True, calibration=50, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(Q, "INT8_MAX_DROP", 0.01)
    monkeypatch.setattr(Q, "INT8_MIN_AGREEMENT", 1.01)  # now no file keeps enough of the fp32 labels
    with pytest.raises(CnnlabError, match=r"fp32 label kept on .* valid \+ test images.*use the fp32 file"):
        E.export_run(digits_cnn_run, output=tmp_path / "q.onnx", int8=True, calibration=50, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_predicting_from_a_missing_onnx_file_is_one_clear_line(tmp_path, cli):
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(img)
    code, _, err = cli("predict", tmp_path / "missing.onnx", img)
    assert code == 2 and "model file not found" in err and "cnnlab export" in err


def test_pt2_export_predicts_as_the_run_and_carries_its_metadata(digits_cnn_run, tmp_path, cli):
    import torch

    out = tmp_path / "digits.pt2"
    result = E.export_run(digits_cnn_run, fmt="pt2", output=out, log=lambda _: None)
    assert result["passed"] and result["same_argmax"] == 1.0 and result["accuracy_exported"] >= 0.85
    extra = {"cnnlab.json": ""}
    torch.export.load(str(out), extra_files=extra)  # our own file, just written
    assert json.loads(extra["cnnlab.json"])["channels"] == "1"
    code, _, err = cli("export", digits_cnn_run, "--format", "pt2", "--int8", "--output", tmp_path / "q.pt2")
    assert code == 2 and "--int8 quantises with ONNX Runtime" in err and not (tmp_path / "q.pt2").exists()


def test_a_file_whose_input_does_not_fit_its_metadata_is_one_clear_line(digits_cnn_run, tmp_path, cli):
    """An image prepared for the metadata's channel count but refused by the graph: a clear line, exit 2."""
    import onnx

    from helpers import write_digit_folder

    good = tmp_path / "good.onnx"
    E.export_run(digits_cnn_run, output=good, log=lambda _: None)
    proto = onnx.load(str(good))
    for entry in proto.metadata_props:
        if entry.key == "channels":
            entry.value = "3"  # the graph takes 1 channel
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    images = write_digit_folder(tmp_path / "images", classes=(0,), per_class=1, size=8, mode="RGB")
    code, _, err = cli("predict", bad, images)
    assert code == 2 and "the model takes images shaped [N, 1, 8, 8], got [1, 3, 8, 8]" in err
    assert len(err.strip().splitlines()) == 1


def test_a_run_with_test_time_flips_exports_what_it_evaluated(digits_cnn_run, tmp_path, monkeypatch):
    """A run evaluated with test-time flips: the exported graph averages each image with its mirror image, so the
    file's test accuracy equals eval.json's and `predict RUN` agrees with `predict RUN/model.onnx` within 1e-4 in
    probability; --no-tta exports the plain model and says its accuracy is not the evaluated one."""
    import yaml

    from cnnlab.apps.serve import open_servable
    from cnnlab.data.images import decode_files
    from cnnlab.evaluate.evaluate import evaluate_run
    from cnnlab.predict.infer import predict_images
    from cnnlab.predict.onnx import predict_onnx
    from helpers import write_digit_folder

    saved = yaml.safe_load((digits_cnn_run / "config.yaml").read_text())
    saved["evaluation"]["tta"] = True
    (digits_cnn_run / "config.yaml").write_text(yaml.safe_dump(saved))
    (digits_cnn_run / "eval.json").unlink()  # its earlier decision (flips off for digits) would stand
    evaluation = evaluate_run(digits_cnn_run, backend="torch", log=lambda _: None)
    assert evaluation["tta"] is True
    out = tmp_path / "tta.onnx"
    result = E.export_run(digits_cnn_run, output=out, log=lambda _: None)
    assert result["tta"] and result["accuracy_compared"] == "yes" and result["images"] == evaluation["n_test"]
    assert abs(result["accuracy_exported"] - evaluation["accuracy"]) <= E.ACCURACY_TOLERANCE
    images = write_digit_folder(tmp_path / "images", classes=tuple(range(10)), per_class=3, size=8)
    _, from_run = predict_images(digits_cnn_run / "best.pt", [images], tta=True, backend="torch", log=lambda _: None)
    _, from_file = predict_onnx(out, [images])
    gap = np.abs(np.stack([p.probabilities for p in from_run]) - np.stack([p.probabilities for p in from_file]))
    assert len(from_run) == 30 and gap.max() <= 1e-4
    served_run, served_file = open_servable(str(digits_cnn_run)), open_servable(str(out))  # `cnnlab serve` both
    arrays, _ = decode_files([images], size=8, channels=1, crop_pct=1.0)
    for image in arrays[:5]:
        assert np.abs(served_run.probabilities(image[None]) - served_file.probabilities(image[None])).max() <= 1e-4
    plain = E.export_run(digits_cnn_run, output=tmp_path / "plain.onnx", tta=False, log=lambda _: None)
    assert not plain["tta"] and plain["accuracy_compared"].startswith("no")
    monkeypatch.setattr(E, "ACCURACY_TOLERANCE", -1.0)  # any gap: the file is refused and nothing is written
    with pytest.raises(CnnlabError, match="not the evaluated model"):
        E.export_run(digits_cnn_run, output=tmp_path / "refused.onnx", log=lambda _: None)
    assert not (tmp_path / "refused.onnx").exists()


def test_int8_keeps_the_output_layer_and_the_first_sixth_of_the_convolutions_in_fp32():
    """The nodes int8 leaves in fp32 (measured on EfficientNet-Lite0: label agreement 94.9% -> 98.3%): of 12
    convolutions the first 2 and the output layer, not a hidden dense layer (most of a small CNN's size); in a graph
    that runs the network twice (test-time flips inside) both copies alike."""

    def network(copy: str) -> list:
        convs = [helper.make_node("Conv", [f"x{copy}{i}", f"w{i}"], [f"x{copy}{i + 1}"], name=f"conv{i}{copy}")
                 for i in range(12)]  # fmt: skip
        hidden = helper.make_node("Gemm", [f"x{copy}12", "w_hidden"], [f"h{copy}"], name=f"hidden{copy}")
        return [*convs, hidden, helper.make_node("Gemm", [f"h{copy}", "w_out"], [f"y{copy}"], name=f"out{copy}")]

    once = helper.make_model(helper.make_graph(network(""), "g", [], []))
    assert Q.float_nodes(once) == ["conv0", "conv1", "out"]
    twice = helper.make_model(helper.make_graph(network("") + network("_mirror"), "g", [], []))
    assert Q.float_nodes(twice) == ["conv0", "conv1", "out", "conv0_mirror", "conv1_mirror", "out_mirror"]


def test_int8_of_a_graph_with_test_time_flips_inside(digits_cnn_run, tmp_path):
    """The default Fashion-MNIST run predicts with flips, so its int8 file holds the network twice: it quantises
    (ONNX Runtime's symbolic shape pass failed on that graph) and keeps the fp32 labels."""
    result = E.export_run(digits_cnn_run, output=tmp_path / "q.onnx", int8=True, tta=True, calibration=100,
                          log=lambda _: None)  # fmt: skip
    assert result["tta"] and result["int8"]["label_agreement"] >= Q.INT8_MIN_AGREEMENT
    assert (tmp_path / "q.onnx").is_file()
