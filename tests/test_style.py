"""`cnnlab stylize` on scikit-image's photos at small sizes: the optimisation moves the image's Gram matrices
toward the style's (a wrong loss would not), the outputs are written, and bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image


def test_the_style_loss_falls_and_the_result_is_closer_to_the_style(cli, tmp_path):
    out = tmp_path / "s.png"
    code, stdout, err = cli("stylize", "--demo", "--size", "96", "--steps", "40", "--output", out)
    assert code == 0, err
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["style_loss_fall"] > 5
    d = record["gram_distance_to_style"]
    assert all(d["result"][k] < d["content"][k] for k in d["result"])  # every style layer moved toward the style
    assert Image.open(out).size == (96, 96) and out.with_suffix(".loss.png").is_file()
    assert "style loss" in stdout


def test_gram_and_total_variation_equal_hand_computed_values():
    from cnnlab.apps.style import gram, total_variation

    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # [1, 2 channels, 2, 2]
    expected = torch.tensor([[30.0, 6.0], [6.0, 2.0]]) / 4
    assert torch.allclose(gram(f), expected)
    # vertical steps |3-1|, |4-2|, 0, 0 average 1; horizontal steps |2-1|, |4-3|, |1-0|, |1-0| average 1
    assert float(total_variation(f)) == pytest.approx(2.0)


def test_bad_input_is_one_line_and_writes_nothing(cli, tmp_path):
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(photo)
    text = tmp_path / "t.jpg"
    text.write_text("not an image")
    out = tmp_path / "o.png"
    cases = [
        ([tmp_path / "missing.jpg", photo], "image not found"),
        ([text, photo], "cannot read image"),
        ([photo, photo, "--size", "32"], "too small"),
        ([photo, photo, "--network", "resnet9000"], "unknown --network"),
        ([photo, photo, "--optimizer", "sgd"], "unknown --optimizer"),
        ([photo], "give CONTENT and STYLE"),
    ]
    for args, words in cases:
        code, _, err = cli("stylize", *args, "--output", out, "--steps", "1")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not out.exists()
    out.write_bytes(b"mine")
    code, _, err = cli("stylize", photo, photo, "--output", out, "--steps", "1")
    assert code == 2 and "--force" in err and out.read_bytes() == b"mine"
