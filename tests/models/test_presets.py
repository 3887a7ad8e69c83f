"""Presets: full JSON-able configurations; lite0 fits its trunk's input and has the paper's branches."""

import json

import pytest

from deeprank.models import PRESETS, MultiScaleNet, preset_config
from deeprank.models.efficientnet_lite import INPUT_MEAN, INPUT_STD
from deeprank.models.presets import ARCH_KEYS


def test_presets_and_their_keys():
    assert set(PRESETS) == {"paper", "small", "lite0"}
    for name in PRESETS:
        config = preset_config(name)
        assert config["preset"] == name and json.loads(json.dumps(config)) == config
        assert set(config) - {"preset"} <= set(ARCH_KEYS), name


def test_lite0_preset():
    config = preset_config("lite0")
    assert (config["image_size"], config["in_channels"], config["embedding_dim"]) == (224, 3, 256)
    assert (config["trunk"], config["trunk_weights"]) == ("efficientnet_lite0", "imagenet")
    assert config["mean"] == list(INPUT_MEAN) and config["std"] == list(INPUT_STD)
    assert not {"conv", "fc", "dropout", "lrn"} & set(config)  # the Krizhevsky ConvNet's keys
    # the paper's shallow branches
    assert config["shallow"] == PRESETS["paper"]["shallow"]
    assert preset_config("lite0", trunk_weights="random")["trunk_weights"] == "random"


def test_paper_and_small_have_no_trunk():
    for name in ("paper", "small"):
        assert "trunk" not in preset_config(name)
        assert MultiScaleNet(name).trunk is None


def test_unknown_preset_and_option():
    with pytest.raises(ValueError, match="preset must be one of"):
        preset_config("resnet")
    with pytest.raises(ValueError, match="unknown model option 'trunk_weight'"):
        preset_config("lite0", trunk_weight="random")
