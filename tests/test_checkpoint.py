import pickle
from pathlib import Path

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    InputSpec,
    TrainingState,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _record(model_name="mlp", classes=("a", "b")) -> Checkpoint:
    return Checkpoint(
        model_name, list(classes), InputSpec(8, 1, (0.1,), (0.2,)), {"x": 1}, weights={"w": torch.arange(4.0)}
    )


def test_round_trip_and_no_temp_files_left(tmp_path):
    state = TrainingState({"state": {}}, {"last_epoch": 3}, torch.get_rng_state())
    save_checkpoint(_record().at({"w": torch.arange(4.0)}, epoch=3, best={"best_epoch": 2}, training=state),
                    tmp_path / "last.pt")  # fmt: skip
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(ckpt.weights["w"], torch.arange(4.0)) and ckpt.epoch == 3 and ckpt.best == {"best_epoch": 2}
    assert ckpt.preprocessing == InputSpec(8, 1, (0.1,), (0.2,)) and ckpt.training.scheduler == {"last_epoch": 3}
    assert ckpt.versions["torch"] == torch.__version__
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["format_version"] == FORMAT_VERSION


def test_failed_save_keeps_the_previous_file(tmp_path):
    save_checkpoint(_record(), tmp_path / "last.pt")
    with pytest.raises(Exception):  # noqa: B017 - any pickling error will do
        save_checkpoint(_record().at({"w": lambda: 0}, epoch=1, best={}), tmp_path / "last.pt")  # not picklable
    assert load_checkpoint(tmp_path / "last.pt").model_name == "mlp"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_format_1_checkpoint_still_loads_and_predicts(tmp_path):
    """tests/fixtures/checkpoint_v1.pt: best.pt written by cnnlab 0.1 (commit 0f84cbe), format 1:
    `cnnlab train --data digits --model cnn --model-option widths=[8,16] --model-option fc=[32] --epochs 15
    --augment none` (93.31% test)."""
    from sklearn.datasets import load_digits

    from cnnlab.predict.infer import model_from_checkpoint, predict_logits

    path = FIXTURES / "checkpoint_v1.pt"
    assert torch.load(path, weights_only=True)["format_version"] == 1
    ckpt = load_checkpoint(path)
    assert ckpt.versions["cnnlab"].startswith("0.1") and ckpt.preprocessing.image_size == 8 and ckpt.epoch >= 1
    model = model_from_checkpoint(ckpt, path)
    digits = load_digits()
    images = torch.from_numpy((digits.images * (255 / 16)).round().astype("uint8"))[:, None]
    logits = predict_logits(model, images, ckpt.preprocessing.normalization())
    assert float((logits.argmax(1).numpy() == digits.target).mean()) > 0.9  # its weights still work


def test_a_newer_format_is_refused_with_a_clear_message(tmp_path):
    raw = torch.load(FIXTURES / "checkpoint_v1.pt", weights_only=True)
    torch.save({**raw, "format_version": FORMAT_VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(CnnlabError, match=f"format {FORMAT_VERSION + 1}, newer than this cnnlab reads.*upgrade"):
        load_checkpoint(tmp_path / "future.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": _Evil()}, protocol=2))
    with pytest.raises(CnnlabError, match="cannot load checkpoint"):
        load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


def test_not_a_checkpoint_and_missing_file(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CnnlabError, match="is not a cnnlab checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CnnlabError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_for_another_model_or_class_count_is_refused(tmp_path):
    ckpt = _record("mlp", ("a", "b"))
    with pytest.raises(CnnlabError, match="is for model 'mlp' with 2 classes, but this run uses 'lenet5' with 2"):
        check_compatible(ckpt, model_name="lenet5", class_names=["a", "b"], path=tmp_path)
    with pytest.raises(CnnlabError, match="with 2 classes, but this run uses 'mlp' with 3 classes"):
        check_compatible(ckpt, model_name="mlp", class_names=["a", "b", "c"], path=tmp_path)
