"""Decoding image sources in batches, in worker processes while the model runs, or in-process.

Every embedding path (:func:`deeprank.embedding.embed_images`, the sharded runs of
:mod:`deeprank.embedding.shards`, the Ray engine's decode tasks) decodes one source with
:func:`decode_source`, so a file gives the same pixels, or the same skip reason, whichever path reads it.

:func:`image_batches` cuts the sources into consecutive batches of ``batch_size`` and yields each
one decoded. With ``workers > 0`` a torch ``DataLoader`` decodes and resizes in that many worker
processes while the caller embeds the previous batch; batches come back in order, cut at the same
places as in-process, so the model sees the same batches and the embeddings are identical.
Memory: at most ``2 * workers`` decoded batches wait (``DataLoader``'s prefetch), each
``batch_size x C x S x S`` bytes (256 RGB images at 224 px: 38 MB).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data.images import image_tensor

__all__ = ["DecodedBatch", "decode_source", "default_workers", "image_batches", "resolve_workers"]

MAX_DEFAULT_WORKERS = 8
Decoded = tuple[torch.Tensor | None, str | None]  # (pixels, None) or (None, why it was skipped)


@dataclass
class DecodedBatch:
    """One batch of sources: ``pixels`` uint8 ``[n_ok, C, S, S]`` of the readable ones, ``kept`` their
    positions within the batch, ``skipped`` ``(source, reason)`` of the others; ``start`` is the
    position of the batch's first source in the whole sequence and ``size`` its number of sources."""

    start: int
    size: int
    pixels: torch.Tensor
    kept: list[int]
    skipped: list[tuple[str, str]]


def decode_source(source: Any, image_size: int, channels: int) -> Decoded:
    """``(pixels, None)`` for a readable image (path or PIL image), ``(None, reason)`` for another."""
    try:
        return image_tensor(source, image_size, channels), None
    except (ValueError, OSError) as exc:  # unreadable or not an image: reported, not fatal
        return None, getattr(exc, "reason", None) or (str(exc).splitlines() or [type(exc).__name__])[0]


def collate(
    sources: Sequence[Any], decoded: Sequence[Decoded], image_size: int, channels: int
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Stack decoded sources into ``(pixels, positions kept, [(source, reason) skipped])``."""
    tensors, kept, skipped = [], [], []
    for i, (src, (pixels, reason)) in enumerate(zip(sources, decoded, strict=True)):
        if pixels is None:
            skipped.append((str(src), str(reason)))
        else:
            tensors.append(pixels)
            kept.append(i)
    if tensors:
        return torch.stack(tensors), kept, skipped
    return torch.empty(0, channels, image_size, image_size, dtype=torch.uint8), kept, skipped


def default_workers() -> int:
    """Decode workers for a long run: one per usable core but one (left to the model), at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores - 1))


def resolve_workers(workers: int | None, count: int, batch_size: int) -> int:
    """``workers`` checked; ``None`` means :func:`default_workers` when there is more than one batch
    (starting processes costs more than decoding a single batch), else 0 (in-process)."""
    if workers is None:
        return default_workers() if count > batch_size else 0
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0 (0 decodes in-process), got {workers!r}")
    return workers


class _Batches(torch.utils.data.Dataset):
    """Item ``b`` is batch ``b`` of the sources, decoded (picklable, for any start method)."""

    def __init__(self, sources: Sequence[Any], image_size: int, channels: int, batch_size: int) -> None:
        self.sources, self.batch_size = sources, batch_size
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return -(-len(self.sources) // self.batch_size)

    def __getitem__(self, b: int) -> DecodedBatch:
        start = b * self.batch_size
        chunk = self.sources[start : start + self.batch_size]
        decoded = [decode_source(src, self.image_size, self.channels) for src in chunk]
        pixels, kept, skipped = collate(chunk, decoded, self.image_size, self.channels)
        return DecodedBatch(start, len(chunk), pixels, kept, skipped)


def _first(items: list[DecodedBatch]) -> DecodedBatch:
    return items[0]


def image_batches(
    sources: Sequence[Any], image_size: int, channels: int, *, batch_size: int, workers: int = 0
) -> Iterator[DecodedBatch]:
    """The sources decoded, ``batch_size`` at a time, in order (see the module docstring).

    ``workers=0`` decodes in this process; ``workers > 0`` in that many worker processes.
    """
    dataset = _Batches(sources, image_size, channels, batch_size)
    if workers == 0:
        yield from (dataset[b] for b in range(len(dataset)))
        return
    # One dataset item is a whole batch, so workers decode whole batches (no per-image IPC) and the
    # loader's order is the batch order.
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, shuffle=False, num_workers=workers, collate_fn=_first
    )
    yield from loader
