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

Presets (:data:`PRESETS`):

* ``paper``: 225 px RGB, AlexNet widths (96-256-384-384-256, fc 4096-4096), shallow branches of 96 maps
  pooled to 4x4, ``d = 4096``; the shapes are those of ``/work/shared/paper.md``.
* ``small``: the same structure at reduced widths for 28-64 px images (CPU-friendly); ``d = 64``.
  It adds batch normalisation after each convolution and uses no dropout: trained from scratch on a
  2-core CPU, both changes measured better (see ``docs/results.md``); the LRN layers stay.

``single_scale=True`` keeps the ConvNet branch only (the paper's single-scale ablation).

Inputs are float images in ``[0, 1]`` of shape ``[B, C, H, W]``; the per-channel normalisation
(``mean``/``std`` in the config) happens inside ``forward`` so every caller feeds the same thing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .nn import LocalResponseNorm

__all__ = ["PRESETS", "MultiScaleNet", "build_model", "preset_config"]

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
}

_ARCH_KEYS = (
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
        if key not in _ARCH_KEYS:
            raise ValueError(f"unknown model option {key!r}; expected one of {sorted(_ARCH_KEYS)}")
        config[key] = copy.deepcopy(value)
    channels = int(config["in_channels"])
    if "mean" not in config:
        config["mean"] = _IMAGENET_MEAN[:] if channels == 3 else [0.5] * channels
    if "std" not in config:
        config["std"] = _IMAGENET_STD[:] if channels == 3 else [0.25] * channels
    return config


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
        preset: ``"small"`` (28-64 px, CPU default) or ``"paper"`` (225 px, d = 4096).
        image_size: input side in pixels (square); default from the preset.
        in_channels: 1 (grayscale) or 3 (RGB).
        embedding_dim: ``d``, the output size; default from the preset.
        single_scale: keep the ConvNet branch only (ablation).
        mean, std: per-channel input normalisation applied inside ``forward``.
        **overrides: any other key of the preset (``conv``, ``fc``, ``shallow``, ``dropout``, ``lrn``,
            ``batch_norm``: batch normalisation after each convolution).

    ``forward(x)`` takes ``[B, C, H, W]`` floats in ``[0, 1]`` with ``H = W = image_size`` and returns
    ``[B, d]`` unit-norm embeddings. ``model.config`` is a JSON-able dict from which
    :func:`build_model` rebuilds the same architecture.
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
        self._init_from_config(config)

    def _init_from_config(self, config: dict[str, Any]) -> None:
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
        self.convnet = _ConvBranch(config)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2:] != (self.image_size,) * 2:
            raise ValueError(
                f"images must be [B, {self.in_channels}, {self.image_size}, {self.image_size}], "
                f"got {tuple(x.shape)}"
            )
        x = (x - self.mean) / self.std
        parts = [_l2_normalize(self.convnet(x))]
        if len(self.shallow):
            parts.append(_l2_normalize(torch.cat([b(x) for b in self.shallow], dim=1)))
        return _l2_normalize(self.embedding(torch.cat(parts, dim=1)))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Embeddings of many images in eval mode, batch by batch: ``[N, C, H, W]`` -> ``[N, d]``."""
        was_training = self.training
        self.eval()
        try:
            out = [self(images[i : i + batch_size].float()) for i in range(0, images.shape[0], batch_size)]
        finally:
            self.train(was_training)
        device = self.mean.device
        return torch.cat(out) if out else torch.empty(0, self.embedding_dim, device=device)

    def load_convnet_weights(self, source: str | Path | Mapping[str, torch.Tensor]) -> list[str]:
        """Load a user's weights for the ConvNet branch (e.g. an ImageNet-pretrained AlexNet).

        ``source`` is a ``.safetensors`` / ``.pt`` / ``.pth`` file or a state dict. Keys are matched by
        name first (``convnet.features.0.weight``, ``features.0.weight``, ...); failing that, the
        source's convolution and linear weights are taken in order and matched by shape to the
        branch's layers (this reads torchvision-style AlexNet files whose widths match). Layers whose
        shape does not match raise ``ValueError``. Nothing is downloaded. Returns the loaded keys.
        """
        state = _read_state_dict(source)
        target = self.convnet.state_dict()
        loaded: dict[str, torch.Tensor] = {}
        for key in target:
            for candidate in (f"convnet.{key}", key):
                if candidate in state:
                    loaded[key] = state[candidate]
                    break
        if not loaded:
            loaded = _match_by_order(state, target)
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


def _read_state_dict(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return {str(k): v for k, v in source.items() if isinstance(v, torch.Tensor)}
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _match_by_order(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Pair the i-th 4-D/2-D weight (and its bias) of ``state`` with the i-th of ``target``."""

    def layers(sd: Mapping[str, torch.Tensor]) -> list[tuple[str, str | None]]:
        out = []
        for key, value in sd.items():
            if key.endswith("weight") and value.dim() in (2, 4):
                bias = key[: -len("weight")] + "bias"
                out.append((key, bias if bias in sd else None))
        return out

    src, dst = layers(state), layers(target)
    if len(src) < len(dst):
        return {}
    matched: dict[str, torch.Tensor] = {}
    for (sw, sb), (dw, db) in zip(src, dst, strict=False):
        matched[dw] = state[sw]
        if db is not None and sb is not None:
            matched[db] = state[sb]
    return matched


def build_model(config: Mapping[str, Any]) -> MultiScaleNet:
    """Rebuild a :class:`MultiScaleNet` from ``model.config`` (as stored in a checkpoint's config.json).

    Accepts the model config itself or a checkpoint config holding it under ``"model"``.
    """
    if "model" in config and isinstance(config["model"], Mapping):
        config = config["model"]
    preset = str(config.get("preset", "small"))
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} in model config")
    full = preset_config(preset)
    # Checkpoints written before the batch_norm key existed had none.
    full["batch_norm"] = False
    for key in _ARCH_KEYS:
        if key in config:
            full[key] = copy.deepcopy(config[key])
    model = MultiScaleNet.__new__(MultiScaleNet)
    nn.Module.__init__(model)
    model._init_from_config(full)
    return model
