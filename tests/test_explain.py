"""`cnnlab explain`: attributions that the deletion test can trust on a model trained on real digits, a
t-SNE that keeps the classes apart, captum's maps equal to their definitions, Grad-CAM on the offline
ImageNet backbone pointing at the coffee cup, and bad requests as one clear line with nothing written."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.config import RunConfig, with_overrides
from cnnlab.explain import attributions as A
from cnnlab.explain import layers as L
from cnnlab.explain.run import ExplainOptions, explain_run
from cnnlab.pipeline import train


@pytest.fixture(scope="module")
def explained(digits_cnn_run):
    result = explain_run(digits_cnn_run, options=ExplainOptions(deletion_images=300), log=lambda _: None)
    return digits_cnn_run, result


def test_deleting_what_gradcam_and_ig_point_at_hurts_more_than_deleting_at_random(explained):
    _, r = explained
    d = r["deletion"]
    assert d["images"] >= 200
    for method in ("gradcam", "integrated_gradients"):
        assert d["drop_at_10pct"][method] > d["drop_at_10pct"]["random"], method
        assert d["beats_random"][method] and d["areas"][method] < d["areas"]["random"]
    assert d["curves"]["random"][0] == pytest.approx(d["curves"]["gradcam"][0])  # same images, nothing removed


def test_the_embedding_keeps_the_classes_apart_and_every_file_is_written(explained):
    run, r = explained
    e = r["embedding"]
    assert e["method"] == "tsne" and e["model_accuracy"] >= 0.85  # real digits
    assert e["knn_accuracy_2d"] >= 0.8 * e["model_accuracy"]
    out = run / "explain"
    for name in ("filters.png", "feature_maps.png", "attributions.png", "deletion.png", "embedding.png"):
        assert (out / name).stat().st_size > 1000, name
    rows = (out / "embedding.csv").read_text().splitlines()
    assert rows[0] == "test_index,x,y,label,predicted" and len(rows) == e["samples"] + 1
    assert json.loads((out / "explain.json").read_text())["gradcam_layer"] == r["gradcam_layer"]


def test_a_budget_remainder_explains_fewer_images_and_says_so(digits_cnn_run, tmp_path):
    """What a --budget-minutes leaves for explaining: the sample shrinks to what fits (at least the pictures' 8
    images), the embedding too, and explain.json says why; with time to spare the default stands."""
    short = explain_run(digits_cnn_run, output=tmp_path / "short", options=ExplainOptions(seconds=0.0),
                        log=lambda _: None)  # fmt: skip
    assert short["images"] == 8 and short["budget"].startswith("8 images explained, not 200")
    assert short["embedding"]["samples"] <= 1000
    roomy = explain_run(digits_cnn_run, output=tmp_path / "roomy", options=ExplainOptions(seconds=10**6,
                        deletion_images=20), log=lambda _: None)  # fmt: skip
    assert roomy["images"] == 20 and "budget" not in roomy


def test_saliency_is_the_gradient_of_the_class_logit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x, target = torch.randn(2, 3, 6, 6), torch.tensor([2, 0])
    got = A.attribute(model, x, target, "saliency", layer=model[1], settings=A.Settings())
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).gather(1, target.view(-1, 1)).sum(), xg)
    assert torch.allclose(got, grad.abs().sum(1), atol=1e-6)


def test_gradcam_equals_the_hand_computation():
    """conv -> ReLU -> global mean -> linear: d logit_c / d A_k = W[c, k] / (H W) everywhere, so Grad-CAM is
    ReLU(sum_k W[c, k] / (H W) * A_k) at the ReLU's (the input's) resolution."""
    torch.manual_seed(1)
    conv, relu, head = nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Linear(3, 2)
    model = nn.Sequential(conv, relu, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    x = torch.randn(1, 1, 5, 5)
    for c in (0, 1):
        got = A.attribute(model, x, torch.tensor([c]), "gradcam", layer=relu, settings=A.Settings())[0]
        with torch.no_grad():
            maps = torch.relu(conv(x))[0]
            hand = torch.relu((head.weight[c].view(3, 1, 1) / 25 * maps).sum(0))
        assert torch.allclose(got, hand, atol=1e-6)


def test_layer_discovery_finds_stages_and_the_gradcam_layer_of_a_resnet():
    from cnnlab.models import create_model

    model = L.explainable(create_model("resnet_small", num_classes=10, in_channels=1, image_size=28))
    layers = L.trace_layers(model, torch.zeros(1, 1, 28, 28))
    stages = [(layer.name, layer.shape) for layer in L.stage_layers(layers)]
    assert [s for _, s in stages] == [(32, 28, 28), (64, 14, 14), (128, 7, 7)]
    cam = L.gradcam_layer(layers)
    assert cam.kind == "BasicBlock" and cam.shape == (128, 7, 7)  # the residual block, skip included


def test_gradcam_on_the_offline_imagenet_backbone_points_at_the_coffee_cup(tmp_path):
    from PIL import Image
    from skimage import data

    from cnnlab.data.images import decode_array
    from cnnlab.models.checkpoint import InputSpec
    from cnnlab.models.pretrained import PretrainedClassifier, backbone_preprocessing, load_pretrained

    p = backbone_preprocessing("efficientnet_lite0")
    model = PretrainedClassifier(1000, 3, p.input_size, backbone="efficientnet_lite0", strategy="feature-extract")
    assert load_pretrained(model, None, with_head=True)
    model = L.explainable(model)
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    pixels, _ = decode_array(tmp_path / "coffee.png", size=p.input_size, channels=3, crop_pct=p.crop_pct)
    x = InputSpec(p.input_size, 3, p.mean, p.std, p.crop_pct).normalization().apply(torch.from_numpy(pixels[None]))
    with torch.no_grad():
        target = model(x).argmax(1)
    layer = L.module(model, L.gradcam_layer(L.trace_layers(model, x)).name)
    settings = A.Settings.for_size(p.input_size)
    cam = A.attribute(model, x, target, "gradcam", layer=layer, settings=settings)
    row, col = np.unravel_index(int(cam[0].argmax()), cam[0].shape)
    assert 0 <= row <= 135 and 30 <= col <= 190  # the cup in the 224-px centre crop (rim to base, left to right)
    patch, at10 = A.deletion_patch(p.input_size), A.FRACTIONS.index(0.1)
    cam_curve = A.deletion_curve(model, x, cam, target, patch=patch)
    random_curve = np.mean([A.deletion_curve(model, x, None, target, patch=patch, seed=s) for s in range(5)], axis=0)
    # the deletion score at 10% (as the digits test): removing the cup's top 10% costs more than 10% at random.
    # Over 0-50% removed, random grey squares destroy this photo sooner than any map (bench/RESULTS.md).
    assert cam_curve[0] - cam_curve[at10] > random_curve[0] - random_curve[at10]
    # with removed squares blurred instead (--deletion-fill blur), Grad-CAM's area beats random's too
    cam_area = A.deletion_area(A.deletion_curve(model, x, cam, target, patch=patch, fill="blur"))
    draws = [A.deletion_curve(model, x, None, target, patch=patch, seed=s, fill="blur") for s in range(5)]
    assert cam_area < A.deletion_area(np.mean(draws, axis=0))


def test_bad_requests_are_one_clear_line_and_write_nothing(digits_cnn_run, tmp_path, cli):
    out = tmp_path / "out"
    code, _, err = cli("explain", digits_cnn_run, "--layer", "nope", "--output", out)
    assert code == 2 and "unknown layer 'nope'" in err and "convs.0" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("explain", digits_cnn_run, "--method", "lime", "--output", out)
    assert code == 2 and "unknown attribution method 'lime'" in err and "gradcam" in err
    for option, value, fragment in (("--deletion-fill", "paint", "mean, blur"), ("--embedding", "umap", "tsne, pca")):
        code, _, err = cli("explain", digits_cnn_run, option, value, "--output", out)
        assert code == 2 and f"'{value}'" in err and fragment in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    code, _, err = cli("explain", digits_cnn_run, bad, "--output", out)
    assert code == 2 and "broken.png" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = cli("explain", digits_cnn_run, "--output", mine)
    assert code == 2 and "--force" in err and [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_list_layers_and_user_images(digits_cnn_run, tmp_path, cli):
    from helpers import write_digit_folder

    code, out, err = cli("explain", digits_cnn_run, "--list-layers")
    assert code == 0 and "grad-cam" in out and "stage" in out
    images = write_digit_folder(tmp_path / "images", classes=(0, 1), per_class=2, size=8)
    code, out, err = cli("explain", digits_cnn_run, images, "--output", tmp_path / "e", "--method", "gradcam")
    assert code == 0, err
    result = json.loads((tmp_path / "e" / "explain.json").read_text())
    assert (
        result["images"] == 4 and "skipped" in result["embedding"] and not (tmp_path / "e" / "embedding.png").exists()
    )
    assert set(result["deletion"]["areas"]) == {"gradcam", "random"}
    assert all(Path(p).exists() for p in result["pictures"])


def test_the_report_shows_inside_the_model_unless_asked_not_to(digits_cnn_run, cli):
    code, out, err = cli("report", digits_cnn_run)
    assert code == 0, err
    html = (digits_cnn_run / "report.html").read_text()
    assert 'id="inside"' in html and "First-layer filters" in html and "beats random" in html
    assert html.count("data:image/png;base64,") >= 9  # the report's own figures and the five explain pictures
    code, out, err = cli("report", digits_cnn_run, "--no-explain")
    assert code == 0 and 'id="inside"' not in (digits_cnn_run / "report.html").read_text()


def test_a_model_without_convolutions_is_explained_without_gradcam(tmp_path, cli):
    cfg = with_overrides(RunConfig(), "data", source="digits")
    cfg = with_overrides(with_overrides(cfg, "model", name="mlp"), "train", epochs=2)
    run = train(cfg, runs_dir=tmp_path, name="m", log=lambda _: None, report=False).run_dir
    result = explain_run(run, options=ExplainOptions(embedding="pca"), log=lambda _: None)
    assert "gradcam" not in result["deletion"]["areas"] and "no convolution layer" in result["skipped"]
    assert result["deletion"]["beats_random"]["integrated_gradients"]
    code, _, err = cli("explain", run, "--method", "gradcam", "--output", tmp_path / "x")
    assert code == 2 and "no convolution layer" in err
