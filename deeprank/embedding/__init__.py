"""Images -> vectors: embedding files, PIL images and arrays with a trained model, batched, decoded in
worker processes (:mod:`.loader`); every query form a search accepts (:mod:`.queries`); resumable
sharded runs, in this process or on Ray (:mod:`.shards`, :mod:`.ray_engine`); Parquet (:mod:`.parquet`)."""

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
from .parquet import write_parquet
from .queries import EmbeddingSet, image_sources, query_vectors
from .sharded_run import embed_to_shards
from .shards import ShardRun

__all__ = [
    "EmbedResult",
    "EmbeddingSet",
    "ShardRun",
    "embed_folder",
    "embed_images",
    "embed_tensor",
    "embed_to_shards",
    "image_sources",
    "list_folder",
    "load_images",
    "model_geometry",
    "query_vectors",
    "write_parquet",
]
