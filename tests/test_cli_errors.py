"""Every bad input: one line `error: ...` naming the problem and the fix, exit 2, nothing left behind."""

import pytest

from helpers import write_digit_folder


@pytest.fixture
def runs(tmp_path):
    path = tmp_path / "runs"
    path.mkdir()
    return path


def _train(cli, runs, *args):
    return cli("train", "--runs-dir", runs, "--name", "r", "--epochs", "1", *args)


def _assert_clean_error(result, runs, *fragments):
    code, _, err = result
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    assert list(runs.iterdir()) == []  # no partial run folder


def test_missing_data_folder(cli, runs, tmp_path):
    result = _train(cli, runs, "--data", f"folder:{tmp_path / 'nowhere'}")
    _assert_clean_error(result, runs, "data folder not found", "nowhere")


def test_folder_without_class_subfolders(cli, runs, tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    _assert_clean_error(_train(cli, runs, "--data", f"folder:{tmp_path / 'flat'}"), runs, "has no class subfolders")


def test_folder_with_an_empty_class(cli, runs, tmp_path):
    write_digit_folder(tmp_path / "d", per_class=3)
    (tmp_path / "d" / "digit9").mkdir()
    _assert_clean_error(_train(cli, runs, "--data", f"folder:{tmp_path / 'd'}"), runs, "digit9", "has no images")


def test_corrupt_image_with_strict_fails(cli, runs, tmp_path):
    write_digit_folder(tmp_path / "d", per_class=5)
    (tmp_path / "d" / "digit0" / "zero.png").write_bytes(b"")
    result = _train(cli, runs, "--data", f"folder:{tmp_path / 'd'}", "--strict")
    _assert_clean_error(result, runs, "unreadable image", "zero.png", "empty file")


def test_corrupt_image_is_skipped_with_a_warning(cli, runs, tmp_path):
    write_digit_folder(tmp_path / "d", per_class=10)
    (tmp_path / "d" / "digit0" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    code, out, err = _train(cli, runs, "--data", f"folder:{tmp_path / 'd'}", "--image-size", "16", "--model", "mlp")
    assert code == 0, err
    assert "warning: skipped 1 unreadable image(s)" in out and "bad.jpg" in out
    assert (runs / "r" / "best.pt").is_file()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model", "resnet_18"], ["unknown model 'resnet_18'", "valid:"]),
        (["--data", "fashion_mnist"], ["unknown data source 'fashion_mnist'", "did you mean 'fashion-mnist'"]),
        (["--valid-fraction", "1.5"], ["valid_fraction must be between 0 and 1", "1.5"]),
        (["--valid-fraction", "0"], ["valid_fraction must be between 0 and 1"]),
        (["--lr", "0"], ["lr must be > 0"]),
        (["--lr", "-0.1"], ["lr must be > 0"]),
        (["--epochs", "0"], ["epochs must be >= 1"]),
        (["--optimizer", "adamm"], ["unknown optimizer 'adamm'"]),
        (["--augment", "heavy"], ["unknown augment preset 'heavy'", "light, none, standard"]),
    ],
)
def test_invalid_options(cli, runs, args, fragments):
    _assert_clean_error(_train(cli, runs, "--data", "digits", *args), runs, *fragments)


def test_existing_run_folder_is_not_overwritten(cli, runs):
    (runs / "r").mkdir()
    (runs / "r" / "mine.txt").write_text("keep me")
    code, _, err = _train(cli, runs, "--data", "digits")
    assert code == 2 and "already exists" in err and "--force" in err
    assert (runs / "r" / "mine.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from cnnlab.config import RunConfig, with_overrides
    from cnnlab.pipeline import train

    runs = tmp_path_factory.mktemp("runs")
    cfg = with_overrides(RunConfig(), "data", source="digits")
    cfg = with_overrides(cfg, "model", name="mlp")
    cfg = with_overrides(cfg, "train", epochs=2)
    return train(cfg, runs_dir=runs, name="mlp", log=lambda _: None, report=False).run_dir


def test_checkpoint_from_another_model_is_refused(cli, digits_run, tmp_path):
    from cnnlab.config import RunConfig, with_overrides
    from cnnlab.pipeline import train

    cfg = with_overrides(with_overrides(RunConfig(), "data", source="digits"), "model", name="lenet5")
    cfg = with_overrides(cfg, "data", image_size=16)
    other = train(cfg, runs_dir=tmp_path, name="lenet", log=lambda _: None, report=False).run_dir
    before = sorted(p.name for p in digits_run.iterdir())
    code, _, err = cli("evaluate", digits_run, "--checkpoint", other / "best.pt")
    assert code == 2 and err.startswith("error: checkpoint") and "is for model 'lenet5'" in err
    assert sorted(p.name for p in digits_run.iterdir()) == before


def test_predict_on_corrupt_image_and_missing_path(cli, digits_run, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    code, _, err = cli("predict", digits_run, bad)
    assert code == 2 and "cannot read image" in err and "bad.png" in err
    code, _, err = cli("predict", digits_run, tmp_path / "none.png")
    assert code == 2 and "image not found" in err


def test_evaluate_on_a_folder_that_is_not_a_run(cli, tmp_path):
    code, _, err = cli("evaluate", tmp_path)
    assert code == 2 and "is not a cnnlab run folder" in err


def test_malformed_model_option_and_unknown_option(cli, runs):
    _assert_clean_error(_train(cli, runs, "--data", "digits", "--model-option", "widths"), runs, "is not KEY=VALUE")
    result = _train(cli, runs, "--data", "digits", "--model", "cnn", "--model-option", "width=[8]")
    _assert_clean_error(result, runs, "unknown option for model 'cnn' 'width'", "did you mean 'widths'")


def test_lab_commands_reject_bad_input(cli, tmp_path, digits_run):
    code, _, err = cli("init-compare", "--data", "digits", "--scheme", "zero", "--output", tmp_path / "i.png")
    assert code == 2 and "unknown init scheme 'zero'" in err and not (tmp_path / "i.png").exists()
    code, _, err = cli("compare", digits_run, "--output", tmp_path / "c.html")
    assert code == 2 and "at least two run folders" in err and not (tmp_path / "c.html").exists()
    readers = tmp_path / "readers.csv"
    readers.write_text("name,sensitivity\nA,0.9\n")
    code, _, err = cli("report", digits_run, "--readers", readers)
    assert code == 2 and "missing column(s) specificity" in err and not (digits_run / "report.html").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--devices", "3", "--batch-size", "128"], "batch_size 128 must divide evenly over 3 processes"),
        (["--budget-minutes", "0"], "budget_minutes must be > 0"),
        (["--backbone-lr", "2"], "backbone_lr must be in (0, 1]"),
        (["--model", "mlp", "--weights", "w.pth"], "apply to pretrained backbones"),
        (["--model", "efficientnet_lite0", "--feature-views", "-1"], "feature_views must be >= 0"),
        (["--model", "resnet_small", "--model-option", "blocks=0"], "resnet_small needs blocks >= 1"),
    ],
)
def test_speed_and_transfer_options_are_checked_before_anything_runs(cli, runs, args, fragment):
    _assert_clean_error(_train(cli, runs, "--data", "digits", *args), runs, fragment)


def test_compile_without_a_cpu_compiler_is_refused_up_front(cli, runs, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda _name: None)
    result = _train(cli, runs, "--data", "digits", "--model", "mlp", "--compile", "--device", "cpu")
    _assert_clean_error(result, runs, "--compile on a CPU needs a C++ compiler", "drop --compile")


def test_sample_data_never_writes_into_a_used_folder(cli, tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "keep.txt").write_text("user data")
    code, _, err = cli("sample-data", "lfw", dest)
    assert code == 2 and "already exists and is not empty" in err
    assert [p.name for p in dest.iterdir()] == ["keep.txt"] and (dest / "keep.txt").read_text() == "user data"
    code, _, err = cli("sample-data", "lwf", tmp_path / "new")
    assert code == 2 and "did you mean 'lfw'" in err and not (tmp_path / "new").exists()


def test_predict_needs_images_after_the_run(cli, tmp_path):
    code, _, err = cli("predict", tmp_path)
    assert code == 2 and "give a run folder and at least one image (or --model NAME" in err
