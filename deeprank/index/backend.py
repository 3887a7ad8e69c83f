"""The interface of a search backend behind :class:`deeprank.Index`, and recall of one against another.

A backend stores vectors under int64 keys (a vector database's primary key, faiss's ``IndexIDMap2``
ids) and answers k-nearest-neighbour queries with keys, never with row positions, so a store that
renumbers or shards internally fits without the :class:`~deeprank.Index` noticing. The ``Index``
maps its user ids (str or int) to keys; :class:`~deeprank.index.flat.FlatIndex` (exact) and
:class:`~deeprank.index.faiss_index.FaissIndex` (approximate) implement the interface.

Contract (``vectors`` are C-contiguous float32 numpy ``[n, dim]``; ``keys`` int64 ``[n]``, >= 0):

- ``add(vectors, keys)``: store new keys; a key already stored, or repeated, raises ``ValueError``
  (a vector database may upsert instead: :class:`~deeprank.index.milvus_index.MilvusIndex` does).
- ``remove(keys)``: delete stored keys and return how many; an unknown key raises ``KeyError``. A
  backend that cannot delete raises ``NotImplementedError`` (the ``Index`` then drops it).
- ``search(vectors, k, **params)``: ``(distances float32 [m, k], keys int64 [m, k])``, each row
  ascending by squared Euclidean distance; a key is ``-1`` where fewer than ``k`` were found. Callers
  check ``k`` (``1 <= k <= len``) with :func:`deeprank.ops.checks.check_k`. Query-time ``params`` are
  keyword-only and named alike across backends (``nprobe``, ``ef_search``, ``filter``); the
  :class:`~deeprank.Index` passes only those a backend's ``search`` declares.
- ``save(directory)``: write the backend's files into an existing directory (each atomically, through
  :mod:`deeprank.io`) and return their names; ``load(directory)`` reads them back, keys included.
- ``len(backend)`` and ``backend.dim``.

A backend an index directory can store also has a ``backend_name`` class attribute and may have
``describe()`` (facts for the manifest); see :mod:`deeprank.index.registry`. ``add`` may take
keyword-only ``ids``, ``paths`` and ``metadata`` (a store that keeps them, like Milvus); the ``Index``
passes those a backend declares.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

__all__ = ["Backend", "recall_against_exact", "recall_at_k"]


@runtime_checkable
class Backend(Protocol):
    """Vectors stored under int64 keys, searchable by k nearest neighbours (see the module docstring)."""

    @property
    def dim(self) -> int:
        """Vector dimension."""
        ...

    def __len__(self) -> int: ...

    def add(self, vectors: np.ndarray, keys: np.ndarray) -> None:
        """Store ``vectors`` ``[n, dim]`` under new ``keys`` ``[n]``."""
        ...

    def remove(self, keys: np.ndarray) -> int:
        """Delete ``keys``; returns the number deleted."""
        ...

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, keys)`` of the ``k`` nearest stored vectors of each row of ``vectors``."""
        ...

    def save(self, directory: Path) -> list[str]:
        """Write the backend's files into ``directory``; returns their names."""
        ...

    @classmethod
    def load(cls, directory: Path) -> Self:
        """The backend saved in ``directory``."""
        ...


def recall_at_k(approx_keys: Any, exact_keys: Any) -> float:
    """Mean share of the exact top-k found by the approximate top-k (order ignored)."""
    a = np.asarray(approx_keys)
    e = np.asarray(exact_keys)
    if a.shape != e.shape or a.ndim != 2:
        raise ValueError(
            f"approx_keys and exact_keys must be [M, k] of the same shape, got {a.shape}, {e.shape}"
        )
    found = (a[:, :, None] == e[:, None, :]).any(axis=1)  # [M, k]: exact neighbour j was found
    return float(found.mean())


def recall_against_exact(exact: Backend, approximate: Backend, queries: np.ndarray, k: int) -> dict:
    """Recall@k of ``approximate`` against ``exact`` over the rows of ``queries``, with both search times.

    ``k`` is capped at ``len(exact)``. Returns ``{"recall@k", "queries", "exact_seconds",
    "approximate_seconds"}``.
    """
    k = min(int(k), len(exact))
    start = time.perf_counter()
    _, want = exact.search(queries, k)
    exact_s = time.perf_counter() - start
    start = time.perf_counter()
    _, got = approximate.search(queries, k)
    approx_s = time.perf_counter() - start
    return {
        f"recall@{k}": recall_at_k(got, want),
        "queries": int(queries.shape[0]),
        "exact_seconds": exact_s,
        "approximate_seconds": approx_s,
    }
