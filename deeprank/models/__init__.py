"""The Deep Ranking embedding network, its presets, and checkpoints.

- :mod:`.multiscale`: :class:`MultiScaleNet` (paper Fig. 3) and :func:`build_model`.
- :mod:`.presets`: the ``paper``, ``small`` and ``lite0`` architecture configurations.
- :mod:`.efficientnet_lite`: the ImageNet-pretrained EfficientNet-Lite0 trunk of ``lite0`` and its loader.
- :mod:`.trunk_cache`: the trunk's training modes (frozen + feature cache, last blocks, full).
- :mod:`.weights`: reading a user's weight file for the ConvNet branch.
- :mod:`.checkpoint`: safetensors weights + JSON config on disk; :func:`load_model`, :func:`resolve_model`.
"""

from __future__ import annotations

from .checkpoint import load_model, resolve_model, save_checkpoint
from .multiscale import MultiScaleNet, build_model
from .presets import PRESETS, preset_config

__all__ = [
    "PRESETS",
    "MultiScaleNet",
    "build_model",
    "load_model",
    "preset_config",
    "resolve_model",
    "save_checkpoint",
]
