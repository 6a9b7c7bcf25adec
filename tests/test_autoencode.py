"""`cnnlab autoencode` on real digits: the denoiser's output is closer to the clean image than its noisy input,
reconstruction error separates another dataset from the one trained on, metrics equal hand-computed values,
and bad input is one line with nothing left behind."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory):
    from cnnlab.apps.autoencode import AutoencodeOptions, autoencode

    runs = tmp_path_factory.mktemp("runs")
    options = AutoencodeOptions(data="digits", model="conv-upsample", noise=0.3, latent=16, epochs=30, batch_size=32,
                                lr=3e-3)  # fmt: skip
    autoencode(options, runs_dir=runs, name="dn", log=lambda _: None)
    return runs / "dn"


def test_denoising_beats_the_noisy_input(denoiser):
    ev = json.loads((denoiser / "eval.json").read_text())
    rec, noisy = ev["reconstruction"], ev["noisy_input"]
    assert rec["mse"] < noisy["mse"] and rec["ssim"] > noisy["ssim"]
    assert ev["psnr_gain_db"] == pytest.approx(rec["psnr_db"] - noisy["psnr_db"]) and ev["psnr_gain_db"] > 2


def test_the_run_folder_keeps_the_best_epoch_by_valid_loss(denoiser):
    with open(denoiser / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    best = min(rows, key=lambda r: float(r["valid_loss"]))
    saved = torch.load(denoiser / "best.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == int(best["epoch"]) and len(rows) == 30
    assert {"config.yaml", "splits.json", "last.pt", "eval.json"} <= {p.name for p in denoiser.iterdir()}
    assert {p.name for p in (denoiser / "plots").iterdir()} == {"reconstructions.png", "latent.png"}


@pytest.mark.slow
def test_reconstruction_error_flags_another_dataset(tmp_path):
    from cnnlab.apps.autoencode import AutoencodeOptions, autoencode

    options = AutoencodeOptions(data="digits", model="conv", latent=16, epochs=30, batch_size=32, lr=3e-3,
                                anomaly="fashion-mnist")  # fmt: skip
    result = autoencode(options, runs_dir=tmp_path, name="a", log=lambda _: None)
    a = result["anomaly"]
    assert a["normal"] == a["anomalous"] == result["n_test"]
    assert a["auc"] > 0.8  # Fashion-MNIST (shrunk to 8x8) reconstructs worse than held-out digits


def test_image_quality_equals_hand_computed_values():
    from cnnlab.apps.autoencode import image_quality

    target = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8
    q = image_quality(target + 0.1, target)
    assert q["mse"] == pytest.approx(0.01, rel=1e-5)
    assert q["psnr_db"] == pytest.approx(10 * math.log10(1 / 0.01), rel=1e-4)  # 20 dB
    assert image_quality(target, target)["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_bad_input_is_one_line_and_leaves_no_run(cli, tmp_path):
    odd = tmp_path / "odd"
    for cls in ("a", "b"):
        (odd / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.full((10, 10), 20 * i, np.uint8)).save(odd / cls / f"{i}.png")
    cases = [
        (["--model", "vae"], "unknown autoencoder 'vae'"),
        (["--loss", "l1"], "unknown --loss 'l1'"),
        (["--noise", "2"], "--noise is a standard deviation"),
        (["--data", f"folder:{odd}", "--model", "conv"], "multiple of 4"),
        (["--anomaly", "Trousers"], "neither a class of digits"),
    ]
    for args, words in cases:
        code, _, err = cli("autoencode", "--data", "digits", *args, "--runs-dir", tmp_path / "runs", "--name", "x")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not (tmp_path / "runs" / "x").exists()


def test_a_classifier_run_is_not_an_autoencoder(digits_cnn_run):
    from cnnlab.apps.autoencode import load_autoencoder
    from cnnlab.errors import CnnlabError

    with pytest.raises(CnnlabError, match="not an autoencoder run"):
        load_autoencoder(digits_cnn_run)


def test_compare_draws_the_same_images_through_each_run(cli, denoiser, tmp_path):
    code, _, err = cli("autoencode", "--data", "digits", "--model", "linear", "--latent", "16", "--epochs", "3",
                       "--runs-dir", tmp_path, "--name", "lin")  # fmt: skip
    assert code == 0, err
    picture = tmp_path / "side.png"
    code, out, err = cli("autoencode", "--compare", denoiser, "--compare", tmp_path / "lin", "--output", picture)
    assert code == 0, err
    assert Image.open(picture).size[0] > 500 and out.count("PSNR") == 2
    code, _, err = cli("autoencode", "--compare", denoiser, "--compare", tmp_path / "lin", "--output", picture)
    assert code == 2 and "--force" in err
    code, _, err = cli("autoencode", "--data", "digits", "--model", "linear", "--epochs", "1", "--seed", "3",
                       "--runs-dir", tmp_path, "--name", "other")  # fmt: skip
    code, _, err = cli(
        "autoencode", "--compare", denoiser, "--compare", tmp_path / "other", "--output", tmp_path / "x.png"
    )
    assert code == 2 and "different data or splits" in err and not (tmp_path / "x.png").exists()
    code, _, err = cli("autoencode", "--compare", denoiser, "--output", tmp_path / "y.png")
    assert code == 2 and "needs two runs or more" in err and not (tmp_path / "y.png").exists()


def test_an_interrupted_run_resumes_to_the_same_weights(cli, tmp_path):
    from cnnlab.apps.autoencode import AutoencodeOptions, autoencode, resume

    options = AutoencodeOptions(data="digits", model="conv", latent=8, epochs=4, batch_size=64)
    autoencode(options, runs_dir=tmp_path, name="whole", log=lambda _: None)

    def stop_after_epoch_2(message: str) -> None:
        if message.startswith("epoch   2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        autoencode(options, runs_dir=tmp_path, name="cut", log=stop_after_epoch_2)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 2
    resume(tmp_path / "cut", log=lambda _: None)
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert cut["epoch"] == 4 and all(
        torch.equal(whole["state_dict"][k], cut["state_dict"][k]) for k in whole["state_dict"]
    )
    assert (tmp_path / "cut" / "metrics.csv").read_text().count("\n") == 5
    code, _, err = cli("autoencode", "--resume", tmp_path / "cut", "--epochs", "9")
    assert code == 2 and "drop epochs" in err
