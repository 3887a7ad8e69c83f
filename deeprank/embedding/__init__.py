"""Images -> vectors: embedding files, PIL images and arrays with a trained model, batched; and every
query form a search accepts (:mod:`.queries`)."""

from __future__ import annotations

from .embed import (
    EmbedResult,
    embed_folder,
    embed_images,
    embed_tensor,
    list_folder,
    load_images,
    model_geometry,
)
from .queries import EmbeddingSet, image_sources, query_vectors

__all__ = [
    "EmbedResult",
    "EmbeddingSet",
    "embed_folder",
    "embed_images",
    "embed_tensor",
    "image_sources",
    "list_folder",
    "load_images",
    "model_geometry",
    "query_vectors",
]
