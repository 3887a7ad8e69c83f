"""Embedding :class:`~deeprank.data.records.Records` (``hf:PATH``, WebDataset shards) in batches.

Each record's bytes are decoded in this process through the one decode path (the store's), a batch
at a time, so memory holds one batch of decoded images; unreadable records are skipped and listed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.images import UnreadableImage
from ..data.records import Records, RecordStore
from ..progress import Progress
from .embed import EmbedResult, embed_tensor, model_geometry

__all__ = ["embed_records"]


def embed_records(
    model: torch.nn.Module, records: Records, *, batch_size: int = 256, progress: bool = False
) -> EmbedResult:
    """Embed every record; ``kept`` are the positions embedded, ``skipped`` ``(name, reason)`` of the rest."""
    size, channels, dim = model_geometry(model)
    store = RecordStore(records, size, channels, max_bytes=0)  # read once: nothing to cache
    rows: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    bar = Progress("embedding", enabled=progress, interval=0.5)
    for start in range(0, len(records), batch_size):
        batch: list[Any] = []
        for i in range(start, min(start + batch_size, len(records))):
            try:
                batch.append(store.get(i))
                kept.append(i)
            except UnreadableImage as err:
                skipped.append((err.path, err.reason))
        if batch:
            rows.append(embed_tensor(model, torch.stack(batch), batch_size=batch_size))
        done = min(start + batch_size, len(records))
        bar.show(f"{done}/{len(records)} images", done / len(records))
    bar.close()
    embeddings = np.concatenate(rows) if rows else np.empty((0, dim), dtype=np.float32)
    return EmbedResult(embeddings, np.asarray(kept, dtype=np.int64), skipped)
