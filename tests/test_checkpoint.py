import pickle

import pytest
import torch

from cnnlab.engine.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from cnnlab.errors import CnnlabError


def _payload(model_name="mlp", classes=("a", "b")):
    return {
        "model_name": model_name, "model": {"w": torch.arange(4.0)}, "class_names": list(classes),
        "preprocessing": {"image_size": 8, "channels": 1, "mean": [0.1], "std": [0.2]}, "config": {"x": 1},
    }  # fmt: skip


def test_round_trip_and_no_temp_files_left(tmp_path):
    save_checkpoint(_payload(), tmp_path / "best.pt")
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert torch.equal(ckpt["model"]["w"], torch.arange(4.0)) and ckpt["format_version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_failed_save_keeps_the_previous_file(tmp_path):
    save_checkpoint(_payload(), tmp_path / "last.pt")
    with pytest.raises(Exception):  # noqa: B017 - any pickling error will do
        save_checkpoint({"model": lambda: 0}, tmp_path / "last.pt")  # a lambda cannot be pickled
    assert load_checkpoint(tmp_path / "last.pt")["model_name"] == "mlp"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


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
    ckpt = _payload("mlp", ("a", "b"))
    with pytest.raises(CnnlabError, match="is for model 'mlp' with 2 classes, but this run uses 'lenet5' with 2"):
        check_compatible(ckpt, model_name="lenet5", class_names=["a", "b"], path=tmp_path)
    with pytest.raises(CnnlabError, match="with 2 classes, but this run uses 'mlp' with 3 classes"):
        check_compatible(ckpt, model_name="mlp", class_names=["a", "b", "c"], path=tmp_path)
