"""``ImageStore``: images decoded on demand for training, kept in one fixed memory block up to a budget."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .images import UnreadableImage, image_tensor, open_image

__all__ = ["ImageStore"]


class ImageStore:
    """Decode images on demand as ``uint8 [C, S, S]`` and keep up to ``max_bytes`` of them in memory.

    ``get(i)`` returns (a copy of) image ``i`` of ``paths``. Unreadable files raise
    :class:`UnreadableImage` and are remembered in :attr:`bad`; the caller decides to skip (training
    counts and warns).

    Memory bound: the decoded images live in one block of ``min(max_bytes, len(paths) * C * S * S)``
    bytes, reserved at the first ``get`` and filled on demand (the operating system commits its
    pages as they are first written), plus about 100 bytes of bookkeeping per cached image and 8 per
    path. When the block is full the least recently used image gives up its slot.

    Why one block: caching each image as its own small tensor left long-lived small allocations
    scattered between the large short-lived ones of every training step, so the C heap could not
    give freed memory back; a folder of 20,000 28 px PNGs grew by about 900 MiB a minute that way
    (``scripts/soak_train.py``). One block allocated once does not fragment the heap.
    """

    def __init__(
        self, paths: Sequence[str | Path], image_size: int, channels: int, max_bytes: int = 2 << 30
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.item_bytes = self.channels * self.image_size**2
        self.max_items = max(1, min(len(self.paths), int(max_bytes) // self.item_bytes))
        self._block: torch.Tensor | None = None  # uint8 [max_items, C, S, S], reserved on first use
        self._slot = np.full(len(self.paths), -1, dtype=np.int64)  # path index -> slot, -1: not cached
        self._lru: OrderedDict[int, int] = OrderedDict()  # cached path index -> slot, oldest first
        self.decoded = 0  # files decoded so far (a cache miss each)
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def cached(self) -> int:
        """How many images are in memory now."""
        return len(self._lru)

    @property
    def reserved_bytes(self) -> int:
        """The size of the image block (its bound; reserved at the first ``get``)."""
        return self.max_items * self.item_bytes

    def get(self, index: int) -> torch.Tensor:
        """Image ``index`` as ``uint8 [C, S, S]`` (a copy); raises :class:`UnreadableImage`."""
        slot = int(self._slot[index])
        if slot >= 0:
            self._lru.move_to_end(index)
            return self._block[slot].clone()  # type: ignore[index]
        try:
            image = self._decode(index)
        except UnreadableImage:
            self.bad.add(index)
            raise
        self.decoded += 1
        if self._block is None:
            self._block = torch.empty(
                (self.max_items, self.channels, self.image_size, self.image_size), dtype=torch.uint8
            )
        if len(self._lru) < self.max_items:
            slot = len(self._lru)
        else:
            evicted, slot = self._lru.popitem(last=False)
            self._slot[evicted] = -1
        self._block[slot].copy_(image)
        self._slot[index] = slot
        self._lru[index] = slot
        return image

    def _decode(self, index: int) -> torch.Tensor:
        """Image ``index`` as ``uint8 [C, S, S]`` (a subclass reads other media than files)."""
        return image_tensor(self.paths[index], self.image_size, self.channels)

    def pil(self, index: int):
        """The full-resolution PIL image (for augmented views); raises :class:`UnreadableImage`."""
        try:
            return open_image(self.paths[index], 3)
        except UnreadableImage:
            self.bad.add(index)
            raise
