"""The course's formulas and demos: conv arithmetic, filters, weight init, capsule routing."""

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.config import DataConfig
from cnnlab.data.batches import InMemoryBatches, Normalization
from cnnlab.data.sources import load_source
from cnnlab.data.splits import make_splits
from cnnlab.lab import filters as flt
from cnnlab.lab.init import apply_init, compare_inits
from cnnlab.lab.layers import check_against_forward, layer_table
from cnnlab.models import create_model, list_models
from cnnlab.models.arithmetic import conv_output_size
from cnnlab.models.capsnet import CapsNet, squash


@pytest.mark.parametrize(("size", "k", "s", "p", "d"), [(28, 3, 1, 1, 1), (28, 5, 1, 0, 1), (7, 2, 2, 0, 1),
                                                         (32, 11, 4, 2, 1), (17, 3, 2, 1, 2)])  # fmt: skip
def test_output_size_formula_matches_a_real_conv(size, k, s, p, d):
    out = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)(torch.zeros(1, 1, size, size))
    assert out.shape[-1] == conv_output_size(size, k, stride=s, padding=p, dilation=d)


@pytest.mark.parametrize("name", list_models())
def test_formula_table_equals_forward_pass_for_every_model(name):
    model = create_model(name, num_classes=10, in_channels=1, image_size=28)
    assert check_against_forward(model, (1, 28, 28)) == []


def test_layer_table_hand_values_for_simple_cnn():
    rows = layer_table(create_model("simple_cnn", num_classes=10), (1, 28, 28))
    conv1, pool3 = rows[0], rows[5]
    assert (conv1.output_shape, conv1.params, conv1.macs) == ((16, 28, 28), 3 * 3 * 1 * 16 + 16, 9 * 16 * 28 * 28)
    assert pool3.output_shape == (64, 3, 3) and "floor drops 1 px of 7" in pool3.note
    assert rows[2].receptive_field == 8 and rows[2].jump == 2  # conv2: 3 -> pool 4 -> +2*2


def test_layers_cli_names_the_problem(cli):
    code, out, _ = cli("layers", "lenet5", "--input", "1x28x28")
    assert code == 0 and "padding=2 keeps 14x14" in out and "formula == forward pass for all" in out
    code, _, err = cli("layers", "vgg16", "--input", "1x8x8")
    assert code == 2 and "does not fit this model" in err and "larger --input" in err
    code, _, err = cli("layers", "simple_cnn", "--input", "1x28")
    assert code == 2 and "is not CxHxW" in err


def test_filter_kernels_follow_their_definition():
    for name in ("sobel-x", "sobel-y", "laplacian"):
        assert flt.KERNELS[name].sum() == 0  # high-pass
    for name in ("box", "gaussian", "sharpen"):
        assert flt.KERNELS[name].sum() == pytest.approx(1)


def test_opencv_and_conv2d_agree_on_a_real_photo():
    _, image = flt.load_grey(None)
    for kernel in flt.KERNELS.values():
        assert np.abs(flt.filter_opencv(image, kernel) - flt.filter_conv2d(image, kernel)).max() < 1e-5


def test_sobel_x_finds_vertical_edges_and_blur_removes_high_frequencies():
    step = np.zeros((16, 16), dtype=np.float32)
    step[:, 8:] = 1.0
    edges = flt.filter_conv2d(step, flt.KERNELS["sobel-x"])
    assert np.allclose(edges[:, 7:9], 4.0) and np.allclose(edges[:, :6], 0) and np.allclose(edges[:, 10:], 0)
    assert np.allclose(flt.filter_conv2d(step, flt.KERNELS["sobel-y"]), 0)
    _, photo = flt.load_grey(None)

    def high_share(img):
        spec = np.abs(np.fft.fftshift(np.fft.fft2(img))) ** 2
        h, w = spec.shape
        centre = spec[h // 2 - h // 8 : h // 2 + h // 8, w // 2 - w // 8 : w // 2 + w // 8].sum()
        return 1 - centre / spec.sum()

    assert high_share(flt.filter_opencv(photo, flt.KERNELS["gaussian"])) < high_share(photo) / 2


def test_filters_cli_writes_the_figure_and_rejects_bad_kernels(cli, tmp_path):
    out = tmp_path / "f.png"
    code, stdout, err = cli(
        "filters", "--kernel", "sobel-x", "--kernel", "[[0,-1,0],[-1,4,-1],[0,-1,0]]", "--output", out
    )
    assert code == 0 and out.stat().st_size > 10_000 and "max difference 0.00e+00" in stdout, err
    code, _, err = cli("filters", "--kernel", "[[1,2],[3,4]]", "--output", tmp_path / "g.png")
    assert code == 2 and "odd side" in err and not (tmp_path / "g.png").exists()
    code, _, err = cli("filters", "--output", out)
    assert code == 2 and "already exists" in err


def test_init_schemes_set_the_weights():
    model = apply_init(create_model("mlp", num_classes=10), "zeros")
    assert all(p.abs().sum() == 0 for p in model.parameters())
    model = apply_init(create_model("mlp", num_classes=10), "uniform")
    first = model.features[1].weight
    assert first.abs().max() <= 1 / np.sqrt(784) and first.std() > 0.5 / np.sqrt(784) / np.sqrt(3)


def _batches(source_name, seed=0):
    src = load_source(DataConfig(source=source_name))
    splits = make_splits(src.labels.numpy(), src.partitions, valid_fraction=0.2, test_fraction=0.2, seed=seed)
    norm = Normalization.from_images(src.images[splits["train"]])
    train = InMemoryBatches(src.images, src.labels, splits["train"], batch_size=64, norm=norm, shuffle=True,
                            seed=seed, drop_last=True)  # fmt: skip
    valid = InMemoryBatches(src.images, src.labels, splits["valid"], batch_size=1000, norm=norm)
    return src, train, valid


def test_init_lesson_shows_on_real_digits():
    src, train, valid = _batches("digits")
    results = compare_inits(
        lambda: create_model("mlp", num_classes=10, image_size=8), train, valid,
        schemes=["zeros", "ones", "uniform", "xavier_uniform", "kaiming_normal"], epochs=6, lr=0.01, seed=0,
        log=lambda _: None,
    )  # fmt: skip
    acc = {r.scheme: r.valid_acc for r in results}
    assert acc["zeros"] < 0.3 and acc["ones"] < 0.3
    assert min(acc["uniform"], acc["xavier_uniform"], acc["kaiming_normal"]) > 0.85


def test_squash_keeps_direction_and_maps_length_into_unit_interval():
    direction = torch.nn.functional.normalize(torch.randn(16), dim=0)
    s = direction * torch.logspace(-3, 2, 100)[:, None]  # one direction, lengths 0.001..100
    v = squash(s)
    lengths = v.norm(dim=-1)
    assert torch.all(lengths >= 0) and torch.all(lengths < 1)
    assert torch.allclose(nn.functional.cosine_similarity(v, s, dim=-1), torch.ones(100), atol=1e-4)
    assert torch.all(lengths[1:] >= lengths[:-1] - 1e-6)  # longer input, longer output


def test_capsnet_coupling_coefficients_sum_to_one_over_parents():
    torch.manual_seed(0)
    model = CapsNet(10, 1, 28)
    v, c = model.capsules(torch.randn(3, 1, 28, 28))
    assert v.shape == (3, 10, 16) and c.shape == (3, model.n_primary, 10)
    assert torch.allclose(c.sum(dim=2), torch.ones(3, model.n_primary), atol=1e-5)
    logits = model.eval()(torch.randn(3, 1, 28, 28))
    assert torch.all(logits.exp() < 1)  # logits are log capsule lengths


def test_capsnet_learns_real_digits_through_the_engine(tmp_path):
    """Margin + reconstruction loss through `train` (digits upscaled to 28 px, the paper's optimiser, no decay)."""
    from cnnlab.config import RunConfig, with_overrides
    from cnnlab.pipeline import train

    cfg = with_overrides(RunConfig(), "data", source="digits", image_size=28, augment="none")
    cfg = with_overrides(cfg, "model", name="capsnet")
    cfg = with_overrides(cfg, "train", epochs=4, optimizer="adam", lr=0.005, weight_decay=0.0)
    result = train(cfg, runs_dir=tmp_path, name="caps", log=lambda _: None, report=False)
    assert result.evaluation["accuracy"] >= 0.90


def test_capsnet_routing_matrices_are_exempt_from_weight_decay():
    """Adam's L2 decay held capsnet near 88% on Fashion-MNIST; W sits in the zero-decay group, convs do not."""
    from cnnlab.config import TrainConfig
    from cnnlab.training.fit import build_optimizer

    model = CapsNet(10, 1, 28)
    groups = build_optimizer(model, TrainConfig(optimizer="adam", weight_decay=5e-4)).param_groups
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay_of[id(model.W)] == 0.0
    assert decay_of[id(model.conv1.weight)] == 5e-4 and decay_of[id(model.conv1.bias)] == 0.0
    assert len(decay_of) == len(list(model.parameters()))  # every parameter optimised exactly once
