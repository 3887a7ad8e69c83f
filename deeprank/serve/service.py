"""The search service behind the HTTP layer: one loaded index and model, batched embedding and search."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from ..data.images import image_tensor, max_image_pixels
from ..embedding import model_geometry
from ..errors import DeeprankError
from ..index import Index
from .batching import Batcher
from .uploads import DEFAULT_FORMATS, UploadError, decode_upload, supported_formats


def image_url(item_id: Any) -> str:
    """The URL serving an item's image: ``/images?id=`` and the id percent-encoded, every character.

    A query string, not a path segment: clients and browsers rewrite ``.`` and ``..`` path segments
    (``%2e%2e`` included) and routers match no newline, so only this form takes every id there and
    back. Bytes of an undecodable file name (surrogate escapes) are encoded as the bytes they were.
    """
    return "/images?id=" + quote(str(item_id), safe="", errors="surrogateescape")


def short_id(text: Any, limit: int = 80) -> str:
    """An id for a message: its ``repr``, cut to ``limit`` characters with the full length said."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(str(text))} characters)"


@dataclass
class PreparedImage:
    """An upload decoded and resized to the model input, with facts about the original."""

    pixels: torch.Tensor  # uint8 [C, S, S]
    width: int
    height: int
    format: str | None


class SearchService:
    """Holds the index and its model for the server's lifetime and answers queries.

    The model runs only on the embedding batcher's thread and ``Index.search`` only on the search
    batcher's thread, so concurrent requests never share either object between threads.
    """

    def __init__(
        self,
        index: Index,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        max_pixels: int | None = None,
        formats: tuple[str, ...] = DEFAULT_FORMATS,
        approximate: bool = False,
    ) -> None:
        if len(index) == 0:
            raise DeeprankError("the index is empty: nothing to serve")
        if approximate and index.approximate_index is None:
            raise DeeprankError("approximate search needs an index saved with an approximate backend")
        self.approximate = bool(approximate)
        searched = index.approximate_index if approximate else None
        self.backend = "flat" if searched is None else getattr(type(searched), "backend_name", "custom")
        self.index = index
        self.max_pixels = max_image_pixels() if max_pixels is None else int(max_pixels)
        self.formats = supported_formats(formats)
        self.model: torch.nn.Module | None
        self.model_error: str | None = None
        try:
            self.model = index.model  # loaded once, now, not on the first upload
        except (DeeprankError, OSError, ValueError) as exc:
            self.model, self.model_error = None, str(exc)
        if self.model is not None:
            self.model.eval()
            self.image_size, self.channels, _ = model_geometry(self.model)
        ids = index.ids
        self.ids = ids
        # Form fields and URLs carry text; map it back to the index's ids (str ids win over equal ints).
        self._by_text: dict[str, Any] = {str(i): i for i in ids if not isinstance(i, str)}
        self._by_text.update({i: i for i in ids if isinstance(i, str)})
        self._allowed = frozenset(os.path.normpath(p) for p in index.paths if p is not None)
        # Requests that will reach each batcher; changed only on the event loop, read by the workers.
        self.uploads_in_flight = 0
        self.queries_in_flight = 0
        self._embedder: Batcher[torch.Tensor, np.ndarray] = Batcher(
            self._embed_batch,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            expected=lambda: self.uploads_in_flight,
            name="deeprank-embed",
        )
        self._searcher: Batcher[tuple[np.ndarray, int], list[dict[str, Any]]] = Batcher(
            self._search_batch,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            expected=lambda: self.queries_in_flight,
            name="deeprank-search",
        )
        # Warm the lazily built lookups (row positions, norms) before threads can race on them.
        index.position(ids[0])
        index.search(index.vector(ids[0]), k=1)

    # ------------------------------------------------------------------ lookups

    def resolve_id(self, text: str) -> Any:
        """The index id written as ``text``; ``KeyError`` if there is none."""
        return self._by_text[text]

    def image_path(self, text: str) -> Path | None:
        """The image file of the item ``text``: only ever a path recorded in the index.

        Returns None when the item has no image; ``KeyError`` for an unknown id.
        """
        path = self.index.path_of(self.resolve_id(text))
        if path is None:
            return None
        normal = os.path.normpath(path)
        if not os.path.isabs(normal) or normal not in self._allowed:
            return None
        # A collection file swapped for a symlink since indexing must not lead out of the collection
        # (symlinked folders above the files, a common layout, are fine).
        if os.path.islink(normal) and os.path.realpath(normal) not in self._allowed:
            return None
        return Path(normal)

    # ------------------------------------------------------------------ work done on worker threads

    def prepare_upload(self, data: bytes) -> PreparedImage:
        """Decode untrusted bytes and resize them to the model input (call from a worker thread)."""
        if self.model is None:  # the reason (model_error) may name server paths: said at startup only
            raise UploadError(422, "this server has no model, so it cannot search by image")
        image = decode_upload(data, max_pixels=self.max_pixels, formats=self.formats)
        try:
            pixels = image_tensor(image, self.image_size, self.channels)
        except (OSError, ValueError) as exc:
            raise UploadError(422, f"the image could not be converted: {exc}") from None
        return PreparedImage(pixels, image.width, image.height, image.format)

    def _embed_batch(self, batch: Sequence[torch.Tensor]) -> list[np.ndarray]:
        assert self.model is not None
        x = torch.stack(list(batch)).float().div_(255.0)
        with torch.inference_mode():
            out = self.model(x).float().cpu().numpy()
        return list(out)

    def _search_batch(self, batch: Sequence[tuple[np.ndarray, int]]) -> list[list[dict[str, Any]]]:
        queries = np.stack([v for v, _ in batch]).astype(np.float32, copy=False)
        k_max = max(k for _, k in batch)
        result = self.index.search(queries, k=k_max, approximate=self.approximate)
        # Top-k lists are ordered (ties by row), so the first k of the top k_max are the top k.
        return [result.hits(j)[:k] for j, (_, k) in enumerate(batch)]

    # ------------------------------------------------------------------ async entry points

    async def embed(self, image: PreparedImage) -> np.ndarray:
        import asyncio

        return await asyncio.wrap_future(self._embedder.submit(image.pixels))

    async def neighbours(self, vector: np.ndarray, k: int) -> list[dict[str, Any]]:
        import asyncio

        k = min(int(k), len(self.index))
        return await asyncio.wrap_future(self._searcher.submit((np.asarray(vector, np.float32), k)))

    def stats(self) -> dict[str, int]:
        return {
            "embed_batches": self._embedder.batches,
            "embedded_images": self._embedder.items,
            "search_batches": self._searcher.batches,
            "searched_queries": self._searcher.items,
        }

    def close(self) -> None:
        self._embedder.close()
        self._searcher.close()
