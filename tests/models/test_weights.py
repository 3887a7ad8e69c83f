"""Loading a user's weight file into the ConvNet branch: by name, by layer order, wrong shapes refused."""

import pytest
import torch
from safetensors.torch import save_file

from deeprank.models import MultiScaleNet


def test_load_convnet_weights_by_name_and_by_order(tmp_path):
    torch.manual_seed(4)
    source = MultiScaleNet("small", in_channels=1)
    target = MultiScaleNet("small", in_channels=1)
    # by name, from a safetensors file of the branch alone
    path = tmp_path / "convnet.safetensors"
    save_file({k: v.contiguous() for k, v in source.convnet.state_dict().items()}, str(path))
    loaded = target.load_convnet_weights(path)
    assert "features.0.weight" in loaded
    for key, value in source.convnet.state_dict().items():
        torch.testing.assert_close(target.convnet.state_dict()[key], value)
    # by order, from a file with other key names (e.g. a torchvision-style AlexNet)
    renamed = {
        f"layer{i}.{k.rsplit('.', 1)[1]}": v for i, (k, v) in enumerate(source.convnet.state_dict().items())
    }
    renamed = {}
    for i, module in enumerate(
        m for m in source.convnet.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ):
        renamed[f"net.{i}.weight"] = module.weight.detach() + 1
        renamed[f"net.{i}.bias"] = module.bias.detach() + 1
    pt = tmp_path / "other.pt"
    torch.save(renamed, pt)
    fresh = MultiScaleNet("small", in_channels=1)
    fresh.load_convnet_weights(pt)
    torch.testing.assert_close(fresh.convnet.features[0].weight, source.convnet.features[0].weight + 1)


def test_load_convnet_weights_rejects_wrong_shapes(tmp_path):
    model = MultiScaleNet("small", in_channels=1)
    bad = {"features.0.weight": torch.zeros(5, 1, 3, 3)}
    with pytest.raises(ValueError, match="features.0.weight"):
        model.load_convnet_weights(bad)
    with pytest.raises(FileNotFoundError):
        model.load_convnet_weights(tmp_path / "missing.pt")
