"""Queries -> vectors: every form a search accepts, turned into float32 embeddings ``[M, d]``.

Accepted: an image path, a folder of images, a PIL image, a list of paths / PIL images, an image
array in a layout of :data:`deeprank.data.images.ARRAY_LAYOUTS` (``[N, C, H, W]``, ``[C, H, W]``,
grey ``[N, H, W]``, uint8 ``[H, W, C]`` as ``numpy.asarray(pil_image)``), embedding vectors ``[M, d]``
or ``[d]`` (numpy, torch or anything ``numpy.asarray`` takes), or another embedded collection (a
:class:`deeprank.Index`: its vectors, after checking it was built with the same model). Images are
embedded with the model, which is asked for only when an image needs it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import ModelMismatchError
from .embed import embed_images, embed_tensor, list_folder

__all__ = ["EmbeddingSet", "image_sources", "query_vectors"]


@runtime_checkable
class EmbeddingSet(Protocol):
    """An embedded collection used as queries (a :class:`deeprank.Index`)."""

    @property
    def dim(self) -> int: ...

    @property
    def embeddings(self) -> np.ndarray: ...

    @property
    def model_hash(self) -> str | None: ...


def _is_image(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike)) or type(x).__module__.startswith("PIL.")


def image_sources(obj: Any) -> list[Any] | None:
    """``obj`` as a list of image sources (paths or PIL images), or None if it is not images."""
    if _is_image(obj):
        return [obj]
    if isinstance(obj, (list, tuple)) and obj and _is_image(obj[0]):
        return list(obj)
    return None


def _collection_vectors(query: EmbeddingSet, dim: int, model_hash: str | None) -> np.ndarray:
    if query.dim != dim:
        raise ModelMismatchError(f"query index has dimension {query.dim}, this index {dim}")
    if query.model_hash and model_hash and query.model_hash != model_hash:
        raise ModelMismatchError("the query index was built with a different model than this index")
    return np.ascontiguousarray(query.embeddings, dtype=np.float32)


def query_vectors(
    query: Any,
    *,
    dim: int,
    model: Callable[[], torch.nn.Module],
    model_hash: str | None = None,
) -> np.ndarray:
    """Float32 C-contiguous embeddings ``[M, dim]`` of ``query`` (any form in the module docstring).

    Args:
        query: what to search with.
        dim: the embedding dimension searched.
        model: returns the model that embeds images; called only for image queries.
        model_hash: the searched collection's model config hash, checked against a query collection's.

    Raises:
        ValueError: an array that is neither vectors ``[M, dim]`` nor images.
        deeprank.errors.ModelMismatchError: a query collection of another dimension or model.
        deeprank.errors.DeeprankError: an unreadable image file, or no model for image queries.
    """
    if isinstance(query, EmbeddingSet):
        return _collection_vectors(query, dim, model_hash)
    if isinstance(query, (str, os.PathLike)) and Path(query).is_dir():
        query = list_folder(query)
    sources = image_sources(query)
    if sources is not None:
        return embed_images(model(), sources, skip_unreadable=False).embeddings
    arr = query.detach().cpu().numpy() if isinstance(query, torch.Tensor) else np.asarray(query)
    if arr.ndim == 1 and arr.shape[0] == dim:
        arr = arr[None, :]
    if arr.ndim == 2 and arr.shape[1] == dim and arr.dtype.kind == "f":
        return np.ascontiguousarray(arr, dtype=np.float32)
    if arr.ndim in (3, 4):
        return embed_tensor(model(), torch.from_numpy(np.array(arr, copy=True)))
    raise ValueError(
        f"cannot search with an array of shape {tuple(arr.shape)}: expected vectors [M, {dim}] "
        "or images [N, C, H, W]"
    )
