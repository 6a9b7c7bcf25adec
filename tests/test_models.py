import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models

# every model on the course's grey 28 px input; the cheap ones also on 3 x 32 px colour input
CASES = (
    [(name, 1, 28) for name in list_models()]
    + [(name, 3, 32) for name in ("mlp", "simple_cnn", "simple_cnn_bn", "lenet5", "cnn", "capsnet", "resnet18")]
    + [("efficientnet_lite0", 3, 32)]
)  # the last: a pretrained backbone trained end to end (fine-tune / retrain)


@pytest.mark.parametrize(("name", "channels", "size"), CASES)
def test_every_model_forward_backward_and_reset(name, channels, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=channels, image_size=size)
    x = torch.randn(4, channels, size, size)
    y = torch.tensor([0, 1, 2, 3])
    loss, logits = model.compute_loss(model.train()(x), y, 0.0)
    assert logits.shape == (4, 7) and torch.isfinite(logits).all() and torch.isfinite(loss)
    loss.backward()
    # gradients reach the first trained layer (a fine-tuned backbone keeps its earliest layers as pretrained)
    first = next(p for p in model.parameters() if p.ndim > 1 and p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0
    model.eval()
    assert model(x).shape == (4, 7) and model.forward_features(x).shape == (4, model.num_features)
    model.reset_classifier(3)
    assert model(x).shape == (4, 3)


def test_models_return_logits_not_probabilities():
    torch.manual_seed(0)
    out = create_model("mlp", num_classes=10)(torch.randn(8, 1, 28, 28) * 5)
    assert not torch.allclose(out.sum(1), torch.ones(8))


def test_unknown_model_lists_valid_names_and_closest():
    with pytest.raises(
        CnnlabError, match=r"unknown model 'simple_cn' \(did you mean 'simple_cnn'\?.*valid: alexnet, capsnet"
    ):
        create_model("simple_cn", num_classes=10)


def test_flatten_size_is_derived_for_other_inputs():
    model = create_model("simple_cnn", num_classes=10, in_channels=3, image_size=64)
    assert model.fc[2].in_features == 64 * 8 * 8  # 64 channels, 64 px halved three times


def test_too_small_input_names_the_fix():
    with pytest.raises(CnnlabError, match="needs images of at least 8x8.*--image-size 8"):
        create_model("simple_cnn", num_classes=10, image_size=4)


def test_inception_uses_aux_logits_in_training_only():
    torch.manual_seed(0)
    model = create_model("inception_v3", num_classes=5, in_channels=1, image_size=28)
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([1, 3])
    logits, aux = model.train()(x)
    loss, _ = model.compute_loss((logits, aux), y, 0.0)
    expected = torch.nn.functional.cross_entropy(logits, y) + 0.4 * torch.nn.functional.cross_entropy(aux, y)
    assert torch.allclose(loss, expected)
    assert isinstance(model.eval()(x), torch.Tensor)  # evaluation ignores the aux head


def test_configurable_cnn_follows_its_options():
    model = create_model("cnn", num_classes=10, options={"widths": [8, 16], "batch_norm": False, "fc": [32]})
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16] and all(c.bias is not None for c in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(CnnlabError, match="unknown option for model 'cnn' 'width'.*did you mean 'widths'"):
        create_model("cnn", num_classes=10, options={"width": [8]})
    with pytest.raises(CnnlabError, match="shrinks to nothing"):
        create_model("cnn", num_classes=10, options={"widths": [8, 8, 8, 8, 8]})
