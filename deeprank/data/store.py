"""``ImageStore``: images decoded on demand for training, kept in memory up to a byte budget."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from .images import UnreadableImage, image_tensor, open_image

__all__ = ["ImageStore"]


class ImageStore:
    """Decode images on demand as ``uint8 [C, S, S]`` and keep up to ``max_bytes`` of them in memory.

    ``get(i)`` returns image ``i`` of ``paths``; ``batch(indices)`` stacks several. Unreadable files raise
    :class:`UnreadableImage`; the caller decides to skip (training counts and warns).
    """

    def __init__(
        self, paths: Sequence[str | Path], image_size: int, channels: int, max_bytes: int = 2 << 30
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.bytes_per_item = self.channels * self.image_size**2
        self.max_items = max(1, max_bytes // self.bytes_per_item)
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> torch.Tensor:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        try:
            image = self._decode(index)
        except UnreadableImage:
            self.bad.add(index)
            raise
        self._cache[index] = image
        if len(self._cache) > self.max_items:
            self._cache.popitem(last=False)
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
