"""Turning images into embeddings with a trained model: batched, with progress, skipping bad files.

The model contract (``deeprank.models``): ``model(x)`` maps ``[B, C, H, W]`` floats in ``[0, 1]`` to
``[B, d]`` L2-normalised embeddings and exposes ``image_size``, ``in_channels`` and ``embedding_dim``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.folders import list_images
from ..data.images import array_images
from ..errors import DeeprankError, EmptyCollectionError
from ..progress import Progress
from .loader import collate, decode_source, image_batches, resolve_workers

ImageSource = str | os.PathLike | Any  # a path or a PIL image


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
def embed_tensor(model: torch.nn.Module, images: Any, batch_size: int = 256) -> np.ndarray:
    """Embed image arrays ``[N, C, H, W]`` (uint8, or floats in ``[0, 1]``), brought to the model's
    input by :func:`deeprank.data.array_images` (the one resize path)."""
    size, channels, dim = model_geometry(model)
    images = array_images(images, size, channels)
    was_training = model.training
    model.eval()
    device = _device_of(model)
    out = np.empty((images.shape[0], dim), dtype=np.float32)
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device).float().div_(255.0)
            out[start : start + batch.shape[0]] = model(batch).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def load_images(
    sources: Sequence[ImageSource], image_size: int, channels: int
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Load sources into a ``uint8`` batch: ``(tensor, positions loaded, [(source, reason) skipped])``."""
    return collate(sources, [decode_source(s, image_size, channels) for s in sources], image_size, channels)


def embed_images(
    model: torch.nn.Module,
    sources: Sequence[ImageSource],
    *,
    batch_size: int = 256,
    progress: bool = False,
    skip_unreadable: bool = True,
    workers: int | None = 0,
) -> EmbedResult:
    """Embed image files or PIL images in batches.

    Unreadable files are skipped and listed in ``EmbedResult.skipped`` (or, with
    ``skip_unreadable=False``, raise :class:`deeprank.errors.DeeprankError` naming the file).
    ``workers`` processes decode the next batches while the model runs (0: in-process; None: one
    per core but one, when there is more than one batch); the result is the same for any value.
    """
    size, channels, dim = model_geometry(model)
    workers = resolve_workers(workers, len(sources), batch_size)
    bar = Progress("embedding", len(sources), enabled=progress)
    out = np.empty((len(sources), dim), dtype=np.float32)  # rows of skipped files are cut at the end
    kept_all: list[int] = []
    skipped_all: list[tuple[str, str]] = []
    for batch in image_batches(sources, size, channels, batch_size=batch_size, workers=workers):
        if batch.skipped and not skip_unreadable:
            src, reason = batch.skipped[0]
            raise DeeprankError(f"cannot read image {src}: {reason}")
        if batch.kept:
            row = len(kept_all)
            out[row : row + len(batch.kept)] = embed_tensor(model, batch.pixels, batch_size)
        kept_all.extend(batch.start + i for i in batch.kept)
        skipped_all.extend(batch.skipped)
        bar.advance(batch.size)
    return EmbedResult(out[: len(kept_all)], np.asarray(kept_all, dtype=np.int64), skipped_all)


def list_folder(
    folder: str | os.PathLike, recursive: bool = True, *, skipped: list[tuple[str, str]] | None = None
) -> list[Path]:
    """Image files under ``folder`` (sorted), with a clear error when the folder is missing or empty.

    What cannot be listed (unreadable sub-folders, link loops) is appended to ``skipped``."""
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"folder not found: {root}")
    if not root.is_dir():
        raise DeeprankError(f"not a folder: {root}")
    files = list_images(root, recursive=recursive, skipped=skipped)
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
    workers: int | None = None,
) -> tuple[np.ndarray, list[Path], list[tuple[str, str]]]:
    """Embed every image under ``folder``; returns ``(embeddings, paths embedded, skipped)``.

    ``workers`` as in :func:`embed_images` (default: worker processes when there is more than a batch).
    """
    unlisted: list[tuple[str, str]] = []
    files = list_folder(folder, recursive, skipped=unlisted)
    res = embed_images(model, files, batch_size=batch_size, progress=progress, workers=workers)
    if res.embeddings.shape[0] == 0:
        raise EmptyCollectionError(f"none of the {len(files)} files in {folder} could be read as an image")
    return res.embeddings, [files[i] for i in res.kept], unlisted + res.skipped
