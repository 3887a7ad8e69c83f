"""The multiscale Deep Ranking network (paper Fig. 3) and its presets.

Three branches read the same image:

* the ConvNet branch, Krizhevsky-style: five convolutions (local response normalisation after the
  first two), three max-poolings, two fully connected layers with dropout; its output is
  L2-normalised;
* two shallow branches on the image subsampled 4:1 and 8:1: one convolution and a max-pooling each;
  their outputs are concatenated and L2-normalised;

then ``[ConvNet | shallow]`` goes through a linear embedding to ``d`` dimensions and a final L2
normalisation. Weights are shared by queries, positives and negatives: training runs the network once
on the stacked ``[q; p; n]`` batch.

The ``lite0`` preset puts an ImageNet-pretrained EfficientNet-Lite0 trunk
(:mod:`deeprank.models.efficientnet_lite`) in the ConvNet branch's place: its globally average-pooled
1280-d features, L2-normalised, then the same shallow branches and embedding;
:meth:`MultiScaleNet.freeze_trunk` chooses which of its parts train.

Presets: :mod:`deeprank.models.presets`.

``single_scale=True`` keeps the ConvNet branch only (the paper's single-scale ablation).

Inputs are float images in ``[0, 1]`` of shape ``[B, C, H, W]``; the per-channel normalisation
(``mean``/``std`` in the config) happens inside ``forward`` so every caller feeds the same thing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import LocalResponseNorm
from .efficientnet_lite import (
    INPUT_MEAN,
    INPUT_STD,
    EfficientNetLite0,
    load_package_state,
    read_pretrained_state,
)
from .presets import ARCH_KEYS, PRESETS, preset_config
from .weights import match_by_order, read_state_dict

__all__ = ["MultiScaleNet", "build_model"]

TRUNKS = ("efficientnet_lite0",)
TRUNK_WEIGHTS = ("imagenet", "random")
# The keys that configure the Krizhevsky ConvNet; a model with a trunk has none of them.
_CONVNET_KEYS = ("conv", "fc", "dropout", "lrn")


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    # eps keeps an all-zero part (e.g. every ReLU off) finite instead of NaN.
    return F.normalize(x, p=2.0, dim=1, eps=1e-12)


def _pool_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class _ConvBranch(nn.Module):
    """Krizhevsky-style ConvNet: convolutions (+LRN, +max-pool), flatten, FC layers with dropout."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = int(config["in_channels"]), int(config["image_size"])
        lrn = config["lrn"]
        for spec in config["conv"]:
            layers.append(nn.Conv2d(channels, spec["out"], spec["kernel"], spec["stride"], spec["padding"]))
            if config.get("batch_norm"):
                layers.append(nn.BatchNorm2d(spec["out"]))
            layers.append(nn.ReLU(inplace=True))
            size = _pool_out(size, spec["kernel"], spec["stride"], spec["padding"])
            # "lrn": "pre" normalises before the pooling (AlexNet), "post" after it (CaffeNet order,
            # 4x cheaper at the same result quality; the small preset uses it).
            norm = {True: "pre", False: None}.get(spec.get("lrn"), spec.get("lrn"))
            if norm not in (None, "pre", "post"):
                raise ValueError(f"conv 'lrn' must be true, false, 'pre' or 'post', got {norm!r}")
            if norm == "pre":
                layers.append(LocalResponseNorm(lrn["size"], lrn["alpha"], lrn["beta"], lrn["k"]))
            if spec.get("pool"):
                k, s, p = spec["pool"]
                layers.append(nn.MaxPool2d(k, s, p))
                size = _pool_out(size, k, s, p)
            if norm == "post":
                layers.append(LocalResponseNorm(lrn["size"], lrn["alpha"], lrn["beta"], lrn["k"]))
            channels = spec["out"]
            if size < 1:
                raise ValueError(f"image_size {config['image_size']} is too small for this ConvNet")
        self.features = nn.Sequential(*layers)
        self.feature_shape = (channels, size, size)
        fc: list[nn.Module] = [nn.Flatten()]
        width = channels * size * size
        for i, out in enumerate(config["fc"]):
            fc += [nn.Dropout(config["dropout"]), nn.Linear(width, out)]
            # No ReLU on the last layer: it feeds the L2 normalisation, and an all-zero ReLU output
            # (every unit off) has no direction and no gradient, which collapsed training.
            if i + 1 < len(config["fc"]):
                fc.append(nn.ReLU(inplace=True))
            width = out
        self.classifier = nn.Sequential(*fc)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _check_trunk(config: Mapping[str, Any]) -> None:
    """Refuse options a pretrained trunk cannot honour, each with its own message."""
    name = config["trunk"]
    if name not in TRUNKS:
        raise ValueError(f"trunk must be one of {list(TRUNKS)}, got {name!r}")
    stray = [key for key in _CONVNET_KEYS if key in config]
    if stray:
        raise ValueError(
            f"{', '.join(stray)} configure the Krizhevsky ConvNet of the paper and small presets; "
            f"the {name} trunk has no such option"
        )
    weights = config.get("trunk_weights", "random")
    if weights not in TRUNK_WEIGHTS:
        raise ValueError(f"trunk_weights must be one of {list(TRUNK_WEIGHTS)}, got {weights!r}")
    if int(config["in_channels"]) != 3:
        raise ValueError(f"the {name} trunk reads RGB: in_channels must be 3, got {config['in_channels']}")
    expected = (list(INPUT_MEAN), list(INPUT_STD))
    if weights == "imagenet" and (list(config["mean"]), list(config["std"])) != expected:
        raise ValueError(
            f"the ImageNet weights of the {name} trunk expect inputs in [-1, 1]: mean {expected[0]} and "
            f"std {expected[1]}, got mean {config['mean']} and std {config['std']}"
        )


def _trunk(config: Mapping[str, Any], load_weights: bool) -> EfficientNetLite0:
    """The trunk of ``config["trunk"]``; ImageNet's weights when the config asks and ``load_weights``."""
    trunk = EfficientNetLite0()
    if load_weights and config.get("trunk_weights") == "imagenet":
        trunk.load_state_dict(load_package_state(trunk.state_dict(), read_pretrained_state()))
    return trunk


class _ShallowBranch(nn.Module):
    """Subsample the image ``factor``:1, one convolution, max-pool to a small grid."""

    def __init__(
        self, spec: Mapping[str, Any], in_channels: int, image_size: int, batch_norm: bool = False
    ) -> None:
        super().__init__()
        self.factor = int(spec["factor"])
        self.input_size = max(1, math.ceil(image_size / self.factor))  # 225 -> 57 and 29, as the paper
        self.conv = nn.Conv2d(in_channels, spec["out"], spec["kernel"], spec["stride"], spec["padding"])
        self.norm: nn.Module = nn.BatchNorm2d(spec["out"]) if batch_norm else nn.Identity()
        size = _pool_out(self.input_size, spec["kernel"], spec["stride"], spec["padding"])
        if spec["pool"] == "adaptive":
            self.grid = int(spec["grid"])
            self.pool: nn.Module = nn.AdaptiveMaxPool2d(self.grid)
            size = self.grid
        else:
            k, s, p = spec["pool"]
            self.pool = nn.MaxPool2d(k, s, p)
            size = _pool_out(size, k, s, p)
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for the {self.factor}:1 branch")
        self.output_shape = (int(spec["out"]), size, size)
        self.out_dim = int(spec["out"]) * size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Area averaging is the anti-aliased subsampling; adaptive pooling handles non-integer factors.
        small = F.adaptive_avg_pool2d(x, self.input_size)
        return self.pool(F.relu(self.norm(self.conv(small)))).flatten(1)


class MultiScaleNet(nn.Module):
    """The Deep Ranking embedding network.

    Args:
        preset: ``"small"`` (28-64 px, CPU default), ``"paper"`` (225 px, d = 4096) or ``"lite0"``
            (224 px, d = 256, ImageNet-pretrained EfficientNet-Lite0 trunk: needs
            ``pip install "deeprank[pretrained]"`` unless ``trunk_weights="random"``).
        image_size: input side in pixels (square); default from the preset.
        in_channels: 1 (grayscale) or 3 (RGB).
        embedding_dim: ``d``, the output size; default from the preset.
        single_scale: keep the ConvNet branch only (ablation).
        mean, std: per-channel input normalisation applied inside ``forward``.
        **overrides: any other key of the preset (``conv``, ``fc``, ``shallow``, ``dropout``, ``lrn``,
            ``batch_norm``: batch normalisation after each convolution; ``trunk_weights``: ``"imagenet"``
            or ``"random"`` for the ``lite0`` trunk).

    ``forward(x)`` takes ``[B, C, H, W]`` floats in ``[0, 1]`` with ``H = W = image_size`` and returns
    ``[B, d]`` unit-norm embeddings. ``model.config`` is a JSON-able dict from which
    :func:`build_model` rebuilds the same architecture (without loading pretrained weights: a
    checkpoint's state dict holds them).
    """

    def __init__(
        self,
        preset: str = "small",
        *,
        image_size: int | None = None,
        in_channels: int = 3,
        embedding_dim: int | None = None,
        single_scale: bool = False,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        config = preset_config(
            preset,
            image_size=image_size,
            in_channels=in_channels,
            embedding_dim=embedding_dim,
            single_scale=bool(single_scale),
            mean=mean,
            std=std,
            **overrides,
        )
        self._init_from_config(config, load_weights=True)

    def _init_from_config(self, config: dict[str, Any], load_weights: bool) -> None:
        if config.get("trunk") is not None:
            _check_trunk(config)
        channels = int(config["in_channels"])
        if channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {channels}")
        size = int(config["image_size"])
        if size < 8:
            raise ValueError(f"image_size must be at least 8, got {size}")
        dim = int(config["embedding_dim"])
        if dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {dim}")
        for key in ("mean", "std"):
            if len(config[key]) != channels:
                raise ValueError(f"{key} must have {channels} values (one per channel), got {config[key]}")
        if any(s <= 0 for s in config["std"]):
            raise ValueError(f"std must be positive, got {config['std']}")
        self.config: dict[str, Any] = config
        self.convnet: _ConvBranch | EfficientNetLite0 = (
            _ConvBranch(config) if config.get("trunk") is None else _trunk(config, load_weights)
        )
        self.shallow = nn.ModuleList(
            []
            if config["single_scale"]
            else [
                _ShallowBranch(s, channels, size, bool(config.get("batch_norm"))) for s in config["shallow"]
            ]
        )
        width = self.convnet.out_dim + sum(b.out_dim for b in self.shallow)
        # No bias: a bias lets the network output one constant point for every image, an absorbing
        # collapse of the triplet loss (seen in training at lr 0.05); normalize(W x) cannot.
        self.embedding = nn.Linear(width, dim, bias=False)
        self.register_buffer("mean", torch.tensor(config["mean"], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(config["std"], dtype=torch.float32).view(1, -1, 1, 1))
        # Set by deeprank.models.trunk_cache.configure_trunk for a frozen trunk; not state, not saved.
        self.trunk_cache: Any = None

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"])

    @property
    def embedding_dim(self) -> int:
        return int(self.config["embedding_dim"])

    @property
    def single_scale(self) -> bool:
        return bool(self.config["single_scale"])

    @property
    def trunk(self) -> str | None:
        """The pretrained trunk in the ConvNet branch's place (``"efficientnet_lite0"``), or ``None``."""
        return self.config.get("trunk")

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2:] != (self.image_size,) * 2:
            raise ValueError(
                f"images must be [B, {self.in_channels}, {self.image_size}, {self.image_size}], "
                f"got {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._normalized(x)
        trunk = self.convnet(x) if self.trunk_cache is None else self.trunk_cache(self.convnet, x)
        parts = [_l2_normalize(trunk)]
        if len(self.shallow):
            parts.append(_l2_normalize(torch.cat([b(x) for b in self.shallow], dim=1)))
        return _l2_normalize(self.embedding(torch.cat(parts, dim=1)))

    @torch.no_grad()
    def _in_eval_batches(
        self, fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int, width: int
    ) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            out = [fn(images[i : i + batch_size].float()) for i in range(0, images.shape[0], batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, width, device=self.mean.device)

    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Embeddings of many images in eval mode, batch by batch: ``[N, C, H, W]`` -> ``[N, d]``."""
        return self._in_eval_batches(self, images, batch_size, self.embedding_dim)

    def trunk_features(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """The ConvNet branch's features of ``[N, C, H, W]`` images in ``[0, 1]``, in eval mode: ``[N, F]``.

        With a trunk (``lite0``): its globally average-pooled 1280-d features, the paper's "ConvNet
        features" baseline before any ranking training (and what a frozen trunk lets one cache).
        Otherwise the ConvNet branch's last fully connected layer. Not L2-normalised (``forward``
        normalises them before the embedding).
        """
        return self._in_eval_batches(
            lambda x: self.convnet(self._normalized(x)), images, batch_size, self.convnet.out_dim
        )

    def freeze_trunk(self, blocks_trainable: int | str = 0, *, train_bn_stats: bool = False) -> None:
        """Choose which parts of the pretrained trunk train; the shallow branches and embedding always do.

        ``blocks_trainable``: ``0`` a frozen trunk, ``N`` its head and last ``N`` of 16 blocks,
        ``"all"`` full fine-tuning. Frozen parameters get ``requires_grad = False`` (give the optimizer
        ``p for p in model.parameters() if p.requires_grad``). The trunk's batch norms stay in eval
        mode, keeping ImageNet's statistics even in train mode, unless ``train_bn_stats=True`` lets the
        trainable parts' update. Not saved in ``config``: a training mode, not the architecture.
        See :meth:`deeprank.models.efficientnet_lite.EfficientNetLite0.freeze`.
        """
        if not isinstance(self.convnet, EfficientNetLite0):
            raise ValueError(
                f"freeze_trunk needs a pretrained trunk (preset lite0); this is {self.config['preset']!r}"
            )
        self.convnet.freeze(blocks_trainable, train_bn_stats=train_bn_stats)

    def load_convnet_weights(self, source: str | Path | Mapping[str, torch.Tensor]) -> list[str]:
        """Load a user's weights for the ConvNet branch (e.g. an ImageNet-pretrained AlexNet).

        ``source`` is a ``.safetensors`` / ``.pt`` / ``.pth`` file or a state dict. Keys are matched by
        name first (``convnet.features.0.weight``, ``features.0.weight``, ...); failing that, the
        source's convolution and linear weights are taken in order and matched by shape to the
        branch's layers (this reads torchvision-style AlexNet files whose widths match). With a trunk
        (``lite0``) the fallback is the EfficientNet-Lite0 package's key names instead, all of them.
        Layers whose shape does not match raise ``ValueError``. Nothing is downloaded. Returns the
        loaded keys.
        """
        state = read_state_dict(source)
        target = self.convnet.state_dict()
        loaded: dict[str, torch.Tensor] = {}
        for key in target:
            for candidate in (f"convnet.{key}", key):
                if candidate in state:
                    loaded[key] = state[candidate]
                    break
        if not loaded and self.trunk is not None:
            loaded = load_package_state(target, state, what=f"the {self.trunk} weights")
        elif not loaded:
            loaded = match_by_order(state, target)
        for key, value in loaded.items():
            if tuple(value.shape) != tuple(target[key].shape):
                raise ValueError(
                    f"weight {key!r} has shape {tuple(value.shape)}, the ConvNet branch needs "
                    f"{tuple(target[key].shape)}"
                )
        if not loaded:
            raise ValueError("no weights in the file match the ConvNet branch")
        self.convnet.load_state_dict({**target, **{k: v.to(target[k].dtype) for k, v in loaded.items()}})
        return sorted(loaded)


def build_model(config: Mapping[str, Any]) -> MultiScaleNet:
    """Rebuild a :class:`MultiScaleNet` from ``model.config`` (as stored in a checkpoint's config.json).

    Accepts the model config itself or a checkpoint config holding it under ``"model"``. A pretrained
    trunk is built with random weights (``load_state_dict`` follows), so rebuilding a ``lite0``
    checkpoint does not need the ``pretrained`` extra.
    """
    if "model" in config and isinstance(config["model"], Mapping):
        config = config["model"]
    preset = str(config.get("preset", "small"))
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} in model config")
    full = preset_config(preset)
    # Checkpoints written before the batch_norm key existed had none.
    full["batch_norm"] = False
    for key in ARCH_KEYS:
        if key in config:
            full[key] = copy.deepcopy(config[key])
    model = MultiScaleNet.__new__(MultiScaleNet)
    nn.Module.__init__(model)
    model._init_from_config(full, load_weights=False)
    return model
