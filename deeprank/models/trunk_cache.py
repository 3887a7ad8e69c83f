"""Training modes of a pretrained trunk (``lite0``), and the frozen trunk's feature cache.

Fine-tuning a 224 px EfficientNet-Lite0 on a 2-core CPU is slow, so training has three modes
(:data:`TRUNK_MODES`, ``deeprank train --trunk-mode``):

* ``frozen`` (the default for a trunk): no trunk parameter trains and its batch norms keep ImageNet's
  statistics, so the trunk is a fixed function of the image. Its pooled features are computed once per
  distinct input and kept in a bounded :class:`TrunkFeatureCache`; only the shallow branches and the
  embedding train (the backward pass never enters the trunk). Pixel shifts are drawn from a fixed set
  of ``views`` offsets per image (:func:`shift_views`), so each image has at most ``views`` distinct
  inputs and the cache fills. Random crops (the unlabelled source's positives) are new each time and
  miss; the full images (queries, negatives) hit.
* ``last-blocks``: the trunk's head and its last ``N`` of 16 blocks train, the rest is fixed; all the
  trunk's batch-norm statistics stay ImageNet's.
* ``full``: every parameter trains and the batch norms update their statistics (the GPU mode).

The cache is keyed by a 128-bit BLAKE2b digest of the normalised input's bytes, so a hit is the same
input by construction (a collision is a 2^-64 event at 2^32 entries); hits equal a fresh forward
up to float rounding. Memory: at most ``max_bytes // (4 * 1280)`` feature rows (float32), each with
about 200 bytes of key and bookkeeping, least recently used first out.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "TRUNK_MODES",
    "TrunkFeatureCache",
    "configure_trunk",
    "shift_views",
]

TRUNK_MODES = ("frozen", "last-blocks", "full")
DEFAULT_CACHE_BYTES = 256 << 20  # 52,428 rows of 1280 float32 features


class TrunkFeatureCache:
    """A bounded least-recently-used cache of a frozen trunk's features, keyed by input content.

    ``cache(trunk, x)`` returns ``trunk(x)`` for a ``[B, C, H, W]`` batch (the trunk's normalised
    input), running the trunk (without gradients) only on the rows not seen before, and each distinct
    row of a batch once. The trunk must be frozen (no trainable parameter, batch norms in eval
    mode): :func:`configure_trunk` sets that up.

    Attributes:
        hits: rows served from the cache (including repeats inside one batch).
        computed: rows the trunk ran on.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, views: int = 4) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"trunk_cache_bytes must be an int >= 0, got {max_bytes!r}")
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ValueError(f"trunk_views must be an int >= 1, got {views!r}")
        self.max_bytes = max_bytes
        self.views = views
        self._rows: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._row_bytes = 0
        self.hits = 0
        self.computed = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        """Bytes of the cached features (keys and bookkeeping not counted: about 200 per row)."""
        return len(self._rows) * self._row_bytes

    def stats(self) -> dict[str, int]:
        return {"rows": len(self), "bytes": self.nbytes, "hits": self.hits, "computed": self.computed}

    @staticmethod
    def key(row: torch.Tensor) -> bytes:
        """The content key of one input ``[C, H, W]``: its shape, dtype and a digest of its bytes."""
        data = row.detach().cpu().contiguous().numpy()
        digest = hashlib.blake2b(memoryview(data).cast("B"), digest_size=16)
        digest.update(repr((tuple(row.shape), str(row.dtype))).encode())
        return digest.digest()

    def __call__(self, trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        keys = [self.key(row) for row in x]
        found: dict[bytes, torch.Tensor] = {}
        missing: dict[bytes, int] = {}  # key -> first row of the batch holding it
        for i, k in enumerate(keys):
            row = self._rows.get(k)
            if row is not None:
                self._rows.move_to_end(k)
                found[k] = row
            elif k not in missing:
                missing[k] = i
        if missing:
            rows = list(missing.values())
            with torch.no_grad():
                fresh = trunk(x[rows]).detach()
            self.computed += len(rows)
            for k, feature in zip(missing, fresh, strict=True):
                found[k] = feature
                self._put(k, feature)
        self.hits += len(keys) - len(missing)
        return torch.stack([found[k] for k in keys]).to(x.device)

    def _put(self, key: bytes, feature: torch.Tensor) -> None:
        self._row_bytes = feature.numel() * feature.element_size()
        if self._row_bytes > self.max_bytes:
            return
        # A clone: a view would keep the whole batch's feature tensor alive.
        self._rows[key] = feature.clone()
        while self.nbytes > self.max_bytes:
            self._rows.popitem(last=False)

    def shift(self, images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
        """:func:`shift_views` with this cache's ``views``: the pixel shifts of frozen-trunk training."""
        return shift_views(images, max_shift, self.views, generator)


def view_offsets(max_shift: int, views: int) -> torch.Tensor:
    """The ``[V, 2]`` distinct (row, column) offsets in ``[-max_shift, max_shift]``, ``V = min(views,
    (2 max_shift + 1)^2)``: view 0 unshifted, the others fixed (seeded) draws, the same in every run."""
    side = torch.arange(-max_shift, max_shift + 1)
    grid = torch.cartesian_prod(side, side)
    grid = grid[(grid != 0).any(dim=1)]  # (0, 0) is view 0
    order = torch.randperm(len(grid), generator=torch.Generator().manual_seed(0x5EED))
    return torch.cat([torch.zeros(1, 2, dtype=grid.dtype), grid[order[: views - 1]]])


def shift_views(
    images: torch.Tensor, max_shift: int, views: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Shift each image of ``[N, C, H, W]`` by one of ``views`` fixed offsets (:func:`view_offsets`).

    Like :func:`deeprank.data.augment.random_shift` (replicate padding, same dtype), but an image can
    only come out in ``views`` ways, so a cache keyed by content sees each of them again.
    """
    if max_shift <= 0 or views <= 1:
        return images
    n, _, h, w = images.shape
    s = int(max_shift)
    offsets = view_offsets(s, views)
    choice = torch.randint(0, len(offsets), (n,), generator=generator)
    src = images if images.is_floating_point() else images.float()
    padded = F.pad(src, (s, s, s, s), mode="replicate")
    out = torch.empty_like(src)
    for v in choice.unique().tolist():
        rows = (choice == v).nonzero().flatten().to(images.device)
        dy, dx = (int(t) for t in offsets[v])
        out[rows] = padded[rows, :, s + dy : s + dy + h, s + dx : s + dx + w]
    return out if images.is_floating_point() else out.to(images.dtype)


def configure_trunk(model: nn.Module, config: Any) -> TrunkFeatureCache | None:
    """Put ``model``'s pretrained trunk in the training mode ``config`` asks; the cache in ``frozen``.

    ``config`` is a :class:`~deeprank.training.config.TrainConfig` (``trunk_mode``, ``trunk_blocks``,
    ``trunk_views``, ``trunk_cache_bytes``). A model without a trunk returns ``None`` and refuses a
    ``trunk_mode``. In ``frozen`` mode the returned cache is attached as ``model.trunk_cache``.
    """
    mode = getattr(config, "trunk_mode", None)
    if getattr(model, "trunk", None) is None:
        if mode is not None:
            raise ValueError(
                f"trunk_mode {mode!r} needs a pretrained trunk (preset lite0); "
                f"this is preset {model.config['preset']!r}"
            )
        return None
    mode = mode or "frozen"
    if mode not in TRUNK_MODES:
        raise ValueError(f"trunk_mode must be one of {', '.join(TRUNK_MODES)}, got {mode!r}")
    model.trunk_cache = None
    if mode == "frozen":
        model.freeze_trunk(0)
        cache = TrunkFeatureCache(int(config.trunk_cache_bytes), int(config.trunk_views))
        model.trunk_cache = cache
        return cache
    if mode == "last-blocks":
        blocks = config.trunk_blocks
        n = len(model.convnet.blocks)
        if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= n:
            raise ValueError(f"trunk_blocks must be 1-{n} with trunk_mode last-blocks, got {blocks!r}")
        model.freeze_trunk(blocks)
    else:
        model.freeze_trunk("all", train_bn_stats=True)
    return None
