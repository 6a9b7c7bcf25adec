"""`cnnlab dogapp`: real photos get the course's answers (a face is human, a coffee cup is neither), the
detectors score on LFW as the course measures them, a breed run's names lose their numeric prefixes, and bad
input is one clear line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.coffee()).save(folder / "coffee.png")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    return folder


def test_a_face_is_human_and_a_coffee_cup_is_neither(photos, cli, tmp_path):
    code, out, err = cli("dogapp", photos / "astronaut.png", photos / "coffee.png", "--output", tmp_path / "out")
    assert code == 0, err
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines() if line.startswith(str(photos)))
    assert lines[str(photos / "astronaut.png")].startswith("a human") and "You look like a..." in out
    assert lines[str(photos / "coffee.png")].startswith("neither")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["astronaut.answer.png", "coffee.answer.png"]
    code, _, err = cli("dogapp", photos / "coffee.png", "--output", tmp_path / "out")  # nothing overwritten
    assert code == 2 and "already exists" in err


@pytest.mark.slow
def test_the_detectors_score_as_the_course_measures_them(cli):
    code, out, err = cli("dogapp", "--assess")
    assert code == 0, err
    found = {line.split(":")[0].strip(): line.split(":")[-1].strip() for line in out.splitlines() if ":" in line}
    assert int(found["LFW faces (100) found as human"].rstrip("%")) >= 85
    assert int(found["LFW non-faces (100) found as human"].rstrip("%")) <= 5
    assert int(found["LFW faces (100) found as dog"].rstrip("%")) <= 5
    assert found["photos without dogs (11) found as dog"].startswith("0")


def test_a_breed_run_names_its_breeds_without_numeric_prefixes(photos, cli, tmp_path):
    from helpers import write_digit_folder

    folder = write_digit_folder(tmp_path / "breeds", classes=(0, 1), per_class=30, size=16)
    for i, name in enumerate(("001.Great_Dane", "002.Border_collie")):
        (folder / f"digit{i}").rename(folder / name)
    code, _, err = cli("train", "--data", f"folder:{folder}", "--model", "simple_cnn_bn", "--epochs", "1", "--runs-dir",
                       tmp_path / "runs",
                       "--name", "b", "--no-report", "--data-root", tmp_path / "d")  # fmt: skip
    assert code == 0, err
    code, out, err = cli("dogapp", photos / "astronaut.png", "--breeds", tmp_path / "runs" / "b")
    assert code == 0, err
    assert "Great Dane" in out and "Border collie" in out and "001." not in out


def test_bad_input_is_one_clear_line(photos, cli, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    code, _, err = cli("dogapp", bad)
    assert code == 2 and "broken.jpg" in err and len(err.strip().splitlines()) == 1
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(photos / "coffee.png", mixed / "coffee.png")
    shutil.copy(bad, mixed / "broken.jpg")
    code, out, err = cli("dogapp", mixed)  # inside a folder: skipped and counted, the rest answered
    assert code == 0 and out.count(": neither") == 1 and "skipped 1 unreadable" in out + err
    (tmp_path / "empty").mkdir()
    code, _, err = cli("dogapp", tmp_path / "empty")
    assert code == 2 and "holds no image files" in err
    code, _, err = cli("dogapp", photos / "coffee.png", "--breeds", photos)
    assert code == 2 and "not a cnnlab run folder" in err
    code, _, err = cli("dogapp")
    assert code == 2 and "--assess" in err


def test_breed_names_lose_prefixes_and_underscores():
    from cnnlab.apps.dogapp import breed_name

    assert breed_name("001.Affenpinscher") == "Affenpinscher"
    assert breed_name("117.Chinese_shar-pei") == "Chinese shar-pei"
    assert breed_name("Border_collie") == "Border collie"
    assert np.all([breed_name(n) == n for n in ("Sneaker", "Bag")])
