"""Turning images into embeddings with a trained model: batched, with a progress bar, skipping bad files.

The model contract (``deeprank.models``): ``model(x)`` maps ``[B, C, H, W]`` floats in ``[0, 1]`` to
``[B, d]`` L2-normalised embeddings and exposes ``image_size``, ``in_channels`` and ``embedding_dim``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DeeprankError, EmptyCollectionError

ImageSource = str | os.PathLike | Any  # a path or a PIL image


class Progress:
    """A dependency-free progress line on stderr (updated at most a few times a second)."""

    def __init__(self, total: int, label: str, enabled: bool = True) -> None:
        self.total, self.label, self.done = total, label, 0
        self.enabled = enabled and total > 0
        self._start = self._last = time.monotonic()

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.25 or self.done >= self.total):
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            sys.stderr.write(f"\r{self.label}: {self.done}/{self.total} ({rate:.0f}/s)")
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


@dataclass
class EmbedResult:
    """Embeddings of the readable sources.

    ``embeddings`` is float32 ``[n_ok, d]``; ``kept`` gives, for each row, its position in the input
    sequence; ``skipped`` lists ``(source, reason)`` for every source that could not be read.
    """

    embeddings: np.ndarray
    kept: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)


def model_geometry(model: torch.nn.Module) -> tuple[int, int, int]:
    """``(image_size, in_channels, embedding_dim)`` of a deeprank model."""
    try:
        return int(model.image_size), int(model.in_channels), int(model.embedding_dim)
    except AttributeError as exc:
        raise TypeError(
            "model must expose image_size, in_channels and embedding_dim (a deeprank model)"
        ) from exc


def _device_of(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.inference_mode()
def embed_tensor(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Embed images ``[N, C, H, W]`` (floats in ``[0, 1]``; resized/converted to the model's input)."""
    size, channels, dim = model_geometry(model)
    images = prepare_images(images, size, channels)
    was_training = model.training
    model.eval()
    device = _device_of(model)
    out = np.empty((images.shape[0], dim), dtype=np.float32)
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device)
            out[start : start + batch.shape[0]] = model(batch).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def prepare_images(images: Any, image_size: int, channels: int) -> torch.Tensor:
    """Bring an image array to ``float32 [N, channels, image_size, image_size]`` in ``[0, 1]``.

    Accepts ``[N, C, H, W]``, ``[C, H, W]`` (one image) or ``[N, H, W]`` (grey), as a tensor or numpy
    array; ``uint8`` values are divided by 255. Grey is repeated to 3 channels, RGB averaged to grey.
    """
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {x.dtype}")
    x = x.float()
    if x.ndim == 3:
        x = x.unsqueeze(1) if x.shape[0] not in (1, 3) else x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], [C, H, W] or [N, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif x.shape[1] == 3 and channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"images have {x.shape[1]} channels, the model expects {channels}")
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    return x.contiguous()


def load_images(
    sources: Sequence[ImageSource], image_size: int, channels: int
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Load sources into a batch; returns ``(tensor, positions loaded, [(source, reason) skipped])``."""
    from .data.transforms import load_image

    tensors, kept, skipped = [], [], []
    for i, src in enumerate(sources):
        try:
            tensors.append(load_image(src, image_size, channels))
            kept.append(i)
        except (ValueError, OSError) as exc:  # unreadable or not an image: reported, not fatal
            reason = getattr(exc, "reason", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
            skipped.append((str(src), reason))
    if tensors:
        return torch.stack(tensors), kept, skipped
    return torch.empty(0, channels, image_size, image_size), kept, skipped


def embed_images(
    model: torch.nn.Module,
    sources: Sequence[ImageSource],
    *,
    batch_size: int = 256,
    progress: bool = False,
    skip_unreadable: bool = True,
) -> EmbedResult:
    """Embed image files or PIL images in batches.

    Unreadable files are skipped and listed in ``EmbedResult.skipped`` (or, with
    ``skip_unreadable=False``, raise :class:`deeprank.errors.DeeprankError` naming the file).
    """
    size, channels, dim = model_geometry(model)
    bar = Progress(len(sources), "embedding", progress)
    parts, kept_all, skipped_all = [], [], []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        batch, kept, skipped = load_images(chunk, size, channels)
        if skipped and not skip_unreadable:
            src, reason = skipped[0]
            raise DeeprankError(f"cannot read image {src}: {reason}")
        if kept:
            parts.append(embed_tensor(model, batch, batch_size))
        kept_all.extend(start + i for i in kept)
        skipped_all.extend(skipped)
        bar.update(len(chunk))
    emb = np.concatenate(parts) if parts else np.empty((0, dim), dtype=np.float32)
    return EmbedResult(emb, np.asarray(kept_all, dtype=np.int64), skipped_all)


def list_folder(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (sorted), with a clear error when the folder is missing or empty."""
    from .data import list_images

    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"folder not found: {root}")
    if not root.is_dir():
        raise DeeprankError(f"not a folder: {root}")
    files = [Path(f) for f in list_images(root, recursive=recursive)]
    if not files:
        raise EmptyCollectionError(f"no images found in {root}")
    return files


def embed_folder(
    model: torch.nn.Module,
    folder: str | os.PathLike,
    *,
    recursive: bool = True,
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[np.ndarray, list[Path], list[tuple[str, str]]]:
    """Embed every image under ``folder``; returns ``(embeddings, paths embedded, skipped)``."""
    files = list_folder(folder, recursive)
    res = embed_images(model, files, batch_size=batch_size, progress=progress)
    if res.embeddings.shape[0] == 0:
        raise EmptyCollectionError(f"none of the {len(files)} files in {folder} could be read as an image")
    return res.embeddings, [files[i] for i in res.kept], res.skipped
