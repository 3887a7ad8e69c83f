"""``FlatIndex``: a growable set of vectors with cached squared norms, searched exactly by ``topk``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _C
from ..ops.topk import as_float32, topk

__all__ = ["FlatIndex"]


class FlatIndex:
    """A growable set of vectors with cached squared norms, searched exactly with :func:`topk`.

    Example::

        index = deeprank.FlatIndex(embeddings)          # [N, D]
        distances, indices = index.search(queries, k=10)
        index.add(more_embeddings)                      # rows N, N+1, ... in order

    Args:
        database: ``[N, D]`` initial vectors (``N`` may be 0 to start empty); same dtype and layout
            policy as :func:`topk`.
        copy: if True (default) the index owns a float32 copy. If False, a C-contiguous float32 input
            is used in place (no copy; do not modify it while the index uses it) until the first
            :meth:`add`, which moves the data into storage the index owns.
    """

    def __init__(self, database: Any, *, copy: bool = True) -> None:
        x = as_float32(database, "database", 2)
        if x.shape[1] < 1:
            raise ValueError("database must have at least one column (D >= 1)")
        borrowed = x is database or not x.flags.owndata  # a view of the caller's memory
        if copy and borrowed:
            x = x.copy()
        self._data = x
        self._owned = copy or not borrowed  # False: rows are the caller's; add() moves them first
        self._norms = _C.squared_norms(x) if x.shape[0] else np.empty(0, dtype=np.float32)
        self._size = x.shape[0]

    @property
    def dim(self) -> int:
        """Vector dimension ``D``."""
        return int(self._data.shape[1])

    def __len__(self) -> int:
        return self._size

    @property
    def vectors(self) -> np.ndarray:
        """The stored ``[N, D]`` float32 vectors (a read-only view)."""
        view = self._data[: self._size]
        view = view.view()
        view.flags.writeable = False
        return view

    @property
    def norms(self) -> np.ndarray:
        """Cached squared norms ``||x_i||^2``, float32 ``[N]`` (a read-only view)."""
        view = self._norms[: self._size].view()
        view.flags.writeable = False
        return view

    def add(self, vectors: Any) -> None:
        """Append ``[n, D]`` vectors; they get indices ``len(self) .. len(self) + n - 1``."""
        x = as_float32(vectors, "vectors", 2)
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors must have D={self.dim} columns like the index, got D={x.shape[1]}")
        n_new = x.shape[0]
        if n_new == 0:
            return
        need = self._size + n_new
        if need > self._data.shape[0] or not self._owned:
            # Grow geometrically so repeated small adds stay amortised O(1) per row.
            capacity = max(need, 2 * self._size, 16)
            data = np.empty((capacity, self.dim), dtype=np.float32)
            data[: self._size] = self._data[: self._size]
            norms = np.empty(capacity, dtype=np.float32)
            norms[: self._size] = self._norms[: self._size]
            self._data, self._norms = data, norms
            self._owned = True
        self._data[self._size : need] = x
        self._norms[self._size : need] = _C.squared_norms(x)
        self._size = need

    def search(self, queries: Any, k: int, *, threads: int | None = None) -> tuple[Any, Any]:
        """The ``k`` nearest stored vectors of each query; same contract as :func:`topk`."""
        if self._size == 0:
            raise ValueError("k must be between 1 and the number of database rows (0), got an empty index")
        return topk(
            queries,
            self._data[: self._size],
            k,
            database_norms=self._norms[: self._size],
            threads=threads,
        )

    def __repr__(self) -> str:
        return f"FlatIndex(n={self._size}, dim={self.dim})"
