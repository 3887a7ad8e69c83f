"""Checkpoints (deeprank.models.checkpoint): files, architecture hash, load and corruption."""

import json

import pytest
import torch

from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import config_hash, load_model, save_checkpoint


def test_checkpoint_hash_files_and_corruption(tmp_path):
    model = MultiScaleNet("small", in_channels=1)
    out = save_checkpoint(tmp_path / "ck", model, {"train": {"lr": 0.1}}, {"step": 1})
    config = json.loads((out / "config.json").read_text())
    assert config["model_hash"] == config_hash(model.config) == config_hash(config)
    assert config_hash({"model": model.config, "train": {"lr": 9}}) == config_hash(model.config)
    other = MultiScaleNet("small", in_channels=1, embedding_dim=32)
    assert config_hash(other.config) != config_hash(model.config)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporaries left
    loaded, _ = load_model(out)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="safetensors"):
        load_model(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_model(out)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing")
