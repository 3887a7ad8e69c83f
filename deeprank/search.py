"""Exact nearest-neighbour search (placeholder until the CPU kernel lands: uses the reference)."""

from __future__ import annotations

import numpy as np

from ._reference import topk_reference


def topk(queries, database, k: int, *, database_norms=None, threads: int | None = None):
    """Exact k nearest neighbours by squared Euclidean distance. Returns ``(distances, indices)``."""
    q = np.asarray(queries, dtype=np.float32)
    x = np.asarray(database, dtype=np.float32)
    d, i = topk_reference(q, x, k)
    return d.astype(np.float32), i


class FlatIndex:
    """A database of vectors with precomputed norms, searched exactly."""

    def __init__(self, database) -> None:
        self.database = np.ascontiguousarray(database, dtype=np.float32)

    def search(self, queries, k: int):
        return topk(queries, self.database, k)
