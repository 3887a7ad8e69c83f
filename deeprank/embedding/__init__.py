"""Images -> vectors: embedding files, PIL images and arrays with a trained model, batched."""

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

__all__ = [
    "EmbedResult",
    "embed_folder",
    "embed_images",
    "embed_tensor",
    "list_folder",
    "load_images",
    "model_geometry",
]
