import pytest

from cnnlab.config import DataConfig, RunConfig, TrainConfig, load_config, save_config, with_overrides
from cnnlab.errors import CnnlabError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"optimizer": "adamx"}, "unknown optimizer 'adamx' (did you mean 'adam'?"),
        ({"schedule": "cosin"}, "did you mean 'cosine'"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1)"),
    ],
)
def test_train_config_rejects_invalid_values(kwargs, message):
    with pytest.raises(CnnlabError, match=message.replace("(", r"\(").replace("[", r"\[").replace(")", r"\)")):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_valid_fraction_outside_open_interval_is_rejected(fraction):
    with pytest.raises(CnnlabError, match="valid_fraction must be between 0 and 1"):
        DataConfig(valid_fraction=fraction)


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = with_overrides(RunConfig(), "train", epochs=3, lr=None)
    assert cfg.train.epochs == 3 and cfg.train.lr == TrainConfig().lr  # None means "not given"
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_yaml_unknown_key_names_closest_match(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  epoch: 3\n")
    with pytest.raises(CnnlabError, match="unknown 'train' option 'epoch' \\(did you mean 'epochs'"):
        load_config(tmp_path / "c.yaml")


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(CnnlabError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_each_flag_lands_in_its_own_section_and_a_stray_one_is_named():
    """The CLI passes its flags by name; each option lives in exactly one config section."""
    from cnnlab.config import config_from_flags

    cfg = config_from_flags(None, {"data": "digits", "data_root": "d", "lr": 0.1, "model": "cnn",
                                   "model_option": ["widths=[8,16]"], "positive": "3", "epochs": None})  # fmt: skip
    assert (cfg.data.source, cfg.data.root, cfg.train.lr, cfg.model.name) == ("digits", "d", 0.1, "cnn")
    assert cfg.model.options == {"widths": [8, 16]} and cfg.evaluation.positive == "3" and cfg.train.epochs == 10
    with pytest.raises(CnnlabError, match="flag 'bogus' is not a config option"):
        config_from_flags(None, {"bogus": 1})
