"""Labelled images held as encoded bytes in a container (a Hugging Face dataset, WebDataset shards).

A :class:`Records` collection names each image, labels it and reads its encoded bytes on demand
(:mod:`deeprank.data.hf`, :mod:`deeprank.data.webdataset`); nothing is unpacked to disk.
:class:`RecordStore` is the :class:`~deeprank.data.store.ImageStore` over one: the bytes go through
the one decode path (:func:`~deeprank.data.images.decode_image`: pixel limit, allowed formats,
truncated data), so a hostile or broken member is one more :class:`UnreadableImage`, skipped and
counted like an unreadable file.

:func:`deeprank.data.record_specs.open_records` picks the reader for a data spec.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .images import UnreadableImage, decode_image, image_tensor, open_image
from .store import ImageStore

__all__ = ["Records", "RecordStore"]

#: Largest encoded image a container member may hold; a larger one is skipped, never read whole.
MAX_MEMBER_BYTES = 256 << 20


@dataclass
class Records:
    """Encoded images in a container: ``names[i]``, ``labels[i]`` (``int64`` into ``classes``) and
    ``read(i)`` (the bytes, or :class:`UnreadableImage`). ``skipped``: ``(name, reason)`` of entries
    left out while listing (no image, no label, not a regular member); ``description``: for config.json.
    """

    names: list[str]
    labels: np.ndarray
    classes: list[str]
    read: Callable[[int], bytes]
    description: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: Sequence[int]) -> Records:
        """The records at ``indices`` (a held-out split), reading from the same container."""
        idx = [int(i) for i in indices]
        read = self.read
        return Records(
            [self.names[i] for i in idx],
            self.labels[idx],
            self.classes,
            lambda j: read(idx[j]),
            dict(self.description),
        )


def class_codes(values: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """Labels as codes into their sorted distinct values (as text): ``(int64 [N], classes)``."""
    text = [str(v) for v in values]
    classes = sorted(set(text), key=lambda c: (len(c), c) if c.isdigit() else (1 << 30, c))
    code = {c: i for i, c in enumerate(classes)}
    return np.asarray([code[t] for t in text], dtype=np.int64), classes


class RecordStore(ImageStore):
    """An :class:`ImageStore` over :class:`Records`: decoded on demand, cached up to ``max_bytes``."""

    def __init__(self, records: Records, image_size: int, channels: int, max_bytes: int = 2 << 30) -> None:
        super().__init__(records.names, image_size, channels, max_bytes)
        self.records = records

    def _image(self, index: int):
        name = self.records.names[index]
        data = self.records.read(index)
        with decode_image(io.BytesIO(data), name=name) as image:
            try:
                return open_image(image, self.channels)
            except UnreadableImage as exc:  # named after the record, not "<PIL image>"
                raise UnreadableImage(name, exc.reason) from None

    def _decode(self, index: int) -> torch.Tensor:
        return image_tensor(self._image(index), self.image_size, self.channels)

    def pil(self, index: int):
        try:
            return self._image(index).convert("RGB")
        except UnreadableImage:
            self.bad.add(index)
            raise
