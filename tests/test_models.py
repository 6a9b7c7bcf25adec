import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_every_model_forward_backward_and_reset(name, channels, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=channels, image_size=size)
    x = torch.randn(4, channels, size, size)
    logits = model(x)
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()
    assert model.forward_features(x).shape == (4, model.num_features)
    logits.sum().backward()
    first = next(p for p in model.parameters() if p.ndim > 1)
    assert first.grad is not None and first.grad.abs().sum() > 0  # gradients reach the first layer
    model.reset_classifier(3)
    assert model(x).shape == (4, 3)


def test_models_return_logits_not_probabilities():
    torch.manual_seed(0)
    out = create_model("mlp", num_classes=10)(torch.randn(8, 1, 28, 28) * 5)
    assert not torch.allclose(out.sum(1), torch.ones(8))


def test_unknown_model_lists_valid_names_and_closest():
    with pytest.raises(CnnlabError, match=r"unknown model 'simple_cn' \(did you mean 'simple_cnn'\?.*valid: lenet5"):
        create_model("simple_cn", num_classes=10)


def test_flatten_size_is_derived_for_other_inputs():
    model = create_model("simple_cnn", num_classes=10, in_channels=3, image_size=64)
    assert model.fc[2].in_features == 64 * 8 * 8  # 64 channels, 64 px halved three times


def test_too_small_input_names_the_fix():
    with pytest.raises(CnnlabError, match="needs images of at least 8x8.*--image-size 8"):
        create_model("simple_cnn", num_classes=10, image_size=4)
