"""The notebook API (`import cnnlab`): train on a folder, get a Run whose predictions are exactly the CLI's, whose
evaluation is eval.json, and whose options and errors are the CLI's."""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import pkgutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import cnnlab
from cnnlab import cli
from cnnlab.errors import CnnlabError
from helpers import write_digit_folder


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A small CNN trained through `cnnlab.train` on a folder of real digit scans (3 classes, 40 each)."""
    root = tmp_path_factory.mktemp("api")
    folder = write_digit_folder(root / "digits", classes=(0, 1, 7), per_class=40, size=16)
    run = cnnlab.train(str(folder), model="cnn", model_options={"widths": [8, 16]}, epochs=6, precision="32-true",
                       runs_dir=root / "runs", name="api", explain=False, verbose=False)  # fmt: skip
    return run, folder


def test_train_takes_every_cli_flag_as_a_keyword():
    """One list of options: a flag added to `cnnlab train` and not to `cnnlab.train` fails here."""
    command = next(c for c in cli.app.registered_commands if c.callback.__name__ == "train")
    flags = set(inspect.signature(command.callback).parameters) - {"resume"}
    keywords = set(inspect.signature(cnnlab.train).parameters) - {"class_names", "verbose"}
    assert keywords == (flags - {"model_option"}) | {"model_options"}


def test_a_folder_trains_into_a_run_that_beats_chance(folder_run):
    run, _ = folder_run
    assert run.path.name == "api" and (run.path / "best.pt").is_file()
    assert run.evaluation.accuracy > 0.7  # 3 classes of real digit scans; chance is 0.33
    assert run.config.model.options == {"widths": [8, 16]}
    assert len(run.history) == 6 and run.class_names == ["digit0", "digit1", "digit7"]


def test_evaluation_is_eval_json(folder_run):
    run, _ = folder_run
    saved = json.loads((run.path / "eval.json").read_text())
    ev = run.evaluation
    assert ev.raw == saved and ev.accuracy == saved["accuracy"] and ev.n_test == saved["n_test"]
    assert ev.confusion_matrix.tolist() == saved["confusion_matrix"]
    assert ev.per_class["digit7"].recall == saved["per_class"]["digit7"]["recall"]
    assert ev.binary is None


def test_predictions_equal_the_cli_and_in_memory_images_equal_their_files(folder_run, cli, tmp_path):
    run, folder = folder_run
    files = sorted((folder / "digit7").glob("*.png"))[:3] + sorted((folder / "digit0").glob("*.png"))[:2]
    code, _, err = cli("predict", run.path, *files, "--output", tmp_path / "p.csv")
    assert code == 0, err
    with (tmp_path / "p.csv").open() as fh:
        expected = np.array([[float(v) for v in row[2:]] for row in list(csv.reader(fh))[1:]])
    got = run.predict(files)
    assert got.names == [str(f) for f in files]
    np.testing.assert_allclose(got.probabilities, expected, atol=1e-6)
    pil = [Image.open(f) for f in files]
    arrays = [np.asarray(p) for p in pil]
    np.testing.assert_allclose(run.predict(pil).probabilities, got.probabilities, atol=1e-6)
    np.testing.assert_allclose(run.predict(arrays).probabilities, got.probabilities, atol=1e-6)
    tensors = torch.stack([torch.tensor(a)[None] for a in arrays])  # a uint8 batch [N, 1, H, W]
    np.testing.assert_allclose(run.predict(tensors).probabilities, got.probabilities, atol=1e-6)
    assert run.predict(files[0]).predicted == got.predicted[:1]


def test_figures_and_the_notebook_display(folder_run):
    run, _ = folder_run
    cm = run.plot_confusion_matrix(normalize=False)
    texts = {t.get_text() for t in cm.axes[0].texts}
    assert texts >= {str(v) for v in run.evaluation.confusion_matrix.ravel()}
    assert len(run.plot_roc().axes[0].lines) >= 3  # one curve per class
    assert run.plot_history().axes and run.show_results(4).axes
    page = run._repr_html_()
    assert f"{100 * run.evaluation.accuracy:.2f}%" in page and "data:image/png;base64," in page


def test_load_opens_the_same_run_and_refuses_a_folder_that_is_not_one(folder_run, tmp_path):
    run, _ = folder_run
    again = cnnlab.load(run.path)
    assert again.evaluation == run.evaluation
    with pytest.raises(CnnlabError, match="not a cnnlab run folder"):
        cnnlab.load(tmp_path)


def test_a_bad_option_is_the_cli_error_and_nothing_is_written(tmp_path, cli):
    with pytest.raises(CnnlabError) as api_error:
        cnnlab.train("digits", optimizer="adamm", runs_dir=tmp_path, verbose=False)
    code, _, err = cli("train", "--data", "digits", "--optimizer", "adamm", "--runs-dir", tmp_path)
    assert code == 2 and err.strip() == f"error: {api_error.value}"
    assert not any(tmp_path.iterdir())


def test_a_dataset_without_classes_asks_for_class_names():
    data = torch.utils.data.TensorDataset(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(CnnlabError, match="pass class_names"):
        cnnlab.train(data, verbose=False)


def test_every_name_of_the_api_is_the_function_not_a_subpackage_of_the_same_name():
    """`cnnlab.train` once resolved to the training package, `cnnlab.audit` to the audit package."""
    for module in pkgutil.walk_packages(cnnlab.__path__, "cnnlab."):
        importlib.import_module(module.name)  # every subpackage set as an attribute of cnnlab, as in a long session
    for name in cnnlab._API:
        assert callable(getattr(cnnlab, name)) and not inspect.ismodule(getattr(cnnlab, name)), name


def test_a_dataset_with_class_names_trains_and_predicts_like_a_folder(tmp_path):
    """Real 8x8 digit scans as a TensorDataset of 0..1 float tensors: registered, split, trained, predicted."""
    digits = load_digits()
    keep = np.isin(digits.target, [0, 1, 7])
    images = torch.tensor(digits.images[keep] / 16, dtype=torch.float32)[:, None]
    labels = torch.tensor(np.searchsorted([0, 1, 7], digits.target[keep]))
    data = torch.utils.data.TensorDataset(images, labels)
    run = cnnlab.train(data, class_names=["zero", "one", "seven"], model="cnn", model_options={"widths": [8, 16]},
                       epochs=4, precision="32-true", runs_dir=tmp_path, name="ds", explain=False,
                       verbose=False)  # fmt: skip
    assert run.config.data.source.startswith("dataset:") and run.class_names == ["zero", "one", "seven"]
    assert run.evaluation.accuracy > 0.8  # 3 well-separated digits; chance is 0.33
    predicted = run.predict(images[:20])
    assert np.mean(np.array(predicted.predicted) == np.array(["zero", "one", "seven"])[labels[:20].numpy()]) >= 0.8


def test_predict_refuses_paths_mixed_with_images_and_an_empty_list(folder_run):
    run, folder = folder_run
    a_file = sorted((folder / "digit0").glob("*.png"))[0]
    with pytest.raises(CnnlabError, match="not both in one call"):
        run.predict([a_file, Image.open(a_file)])
    with pytest.raises(CnnlabError, match="no images to predict"):
        run.predict([])
