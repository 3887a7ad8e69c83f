"""MultiScaleNet: layer shapes of each preset, normalisation, config round trip, weight loading."""

import pytest
import torch

from deeprank.models import PRESETS, MultiScaleNet, build_model
from deeprank.nn import LocalResponseNorm


def _conv_shapes(model):
    return [tuple(m.weight.shape) for m in model.convnet.features if isinstance(m, torch.nn.Conv2d)]


def test_paper_preset_layer_shapes():
    model = MultiScaleNet("paper")
    assert model.image_size == 225 and model.in_channels == 3 and model.embedding_dim == 4096
    assert _conv_shapes(model) == [
        (96, 3, 11, 11),
        (256, 96, 5, 5),
        (384, 256, 3, 3),
        (384, 384, 3, 3),
        (256, 384, 3, 3),
    ]
    assert model.convnet.feature_shape == (256, 6, 6)
    fcs = [tuple(m.weight.shape) for m in model.convnet.classifier if isinstance(m, torch.nn.Linear)]
    assert fcs == [(4096, 9216), (4096, 4096)]
    # the two shallow branches: 225 px subsampled to 57 and 29, both pooled to 4x4x96
    assert [b.input_size for b in model.shallow] == [57, 29]
    assert [b.output_shape for b in model.shallow] == [(96, 4, 4), (96, 4, 4)]
    assert [tuple(b.conv.weight.shape) for b in model.shallow] == [(96, 3, 8, 8)] * 2
    assert tuple(model.embedding.weight.shape) == (4096, 4096 + 2 * 1536)
    # LRN follows conv1 and conv2, and it is deeprank's module
    kinds = [type(m).__name__ for m in model.convnet.features]
    assert kinds[:3] == ["Conv2d", "ReLU", "LocalResponseNorm"]
    assert sum(isinstance(m, LocalResponseNorm) for m in model.convnet.features) == 2


@pytest.mark.parametrize("size", [28, 32, 64])
def test_small_preset_shapes_and_output(size):
    torch.manual_seed(0)
    model = MultiScaleNet("small", image_size=size, in_channels=1).eval()
    assert len(model.shallow) == 2 and [b.factor for b in model.shallow] == [4, 8]
    assert sum(isinstance(m, LocalResponseNorm) for m in model.convnet.features) == 2
    assert len(_conv_shapes(model)) == 5
    out = model(torch.rand(3, 1, size, size))
    assert out.shape == (3, PRESETS["small"]["embedding_dim"])
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_small_layer_shapes_at_28px():
    model = MultiScaleNet("small", in_channels=1)
    assert _conv_shapes(model) == [
        (16, 1, 5, 5),
        (32, 16, 3, 3),
        (48, 32, 3, 3),
        (48, 48, 3, 3),
        (32, 48, 3, 3),
    ]
    assert model.convnet.feature_shape == (32, 4, 4)
    fcs = [tuple(m.weight.shape) for m in model.convnet.classifier if isinstance(m, torch.nn.Linear)]
    assert fcs == [(256, 512), (256, 256)]
    assert [b.input_size for b in model.shallow] == [7, 4]
    assert [b.output_shape for b in model.shallow] == [(32, 2, 2), (32, 2, 2)]
    assert tuple(model.embedding.weight.shape) == (64, 256 + 256)


def test_batch_norm_follows_each_convolution_in_small_only():
    small = MultiScaleNet("small", in_channels=1)
    layers = list(small.convnet.features)
    convs = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d)]
    assert all(isinstance(layers[i + 1], torch.nn.BatchNorm2d) for i in convs)
    assert [b.norm.num_features for b in small.shallow] == [32, 32]
    assert small.config["batch_norm"] is True and small.config["dropout"] == 0.0
    paper = MultiScaleNet("paper")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in paper.modules())
    assert paper.config["dropout"] == 0.4
    # A checkpoint config written before the batch_norm key existed rebuilds without it.
    legacy = {k: v for k, v in small.config.items() if k != "batch_norm"}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in build_model(legacy).modules())


def test_single_scale_has_convnet_only():
    model = MultiScaleNet("small", single_scale=True)
    assert len(model.shallow) == 0
    assert tuple(model.embedding.weight.shape) == (64, 256)
    out = model.eval()(torch.rand(2, 3, 28, 28))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_parts_are_l2_normalised_before_the_embedding():
    """Scaling one branch's raw output must not change the result (each part is L2-normalised)."""
    torch.manual_seed(1)
    model = MultiScaleNet("small", in_channels=1).eval()
    x = torch.rand(4, 1, 28, 28)
    ref = model(x)
    with torch.no_grad():
        last_fc = [m for m in model.convnet.classifier if isinstance(m, torch.nn.Linear)][-1]
        last_fc.weight.mul_(7.0)
        last_fc.bias.mul_(7.0)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-6)


def test_normalisation_happens_inside():
    torch.manual_seed(2)
    a = MultiScaleNet("small", in_channels=1, mean=[0.0], std=[1.0]).eval()
    b = MultiScaleNet("small", in_channels=1, mean=[0.5], std=[2.0]).eval()
    b.load_state_dict(a.state_dict() | {"mean": b.mean, "std": b.std})
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(b(x), a((x - 0.5) / 2.0))


def test_config_round_trip_rebuilds_same_network():
    torch.manual_seed(3)
    model = MultiScaleNet("small", image_size=32, in_channels=3, embedding_dim=48, single_scale=False).eval()
    clone = build_model(model.config).eval()
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(clone(x), model(x))
    # a checkpoint-style config holding the model under "model" works too
    assert build_model({"model": model.config}).config == model.config


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="preset"):
        MultiScaleNet("huge")
    with pytest.raises(ValueError, match="in_channels"):
        MultiScaleNet("small", in_channels=2)
    with pytest.raises(ValueError, match="unknown model option"):
        MultiScaleNet("small", widths=[1])
    model = MultiScaleNet("small", in_channels=1)
    with pytest.raises(ValueError, match=r"images must be \[B, 1, 28, 28\]"):
        model(torch.rand(2, 3, 28, 28))


def test_gradients_flow_to_every_branch():
    torch.manual_seed(5)
    model = MultiScaleNet("small", in_channels=1)
    out = model(torch.rand(6, 1, 28, 28))
    (out[:, 0].sum()).backward()
    for branch in (model.convnet.features[0], model.shallow[0].conv, model.shallow[1].conv, model.embedding):
        assert branch.weight.grad is not None and branch.weight.grad.abs().sum() > 0
