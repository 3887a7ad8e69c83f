"""``FlatIndex``: exact search over keyed vectors with cached squared norms, by :func:`deeprank.topk`.

The exact :class:`~deeprank.index.backend.Backend`. Rows keep their insertion order (removal closes
up the gaps in order), so ties, broken by row, go to the earlier added vector. Memory: the vectors
(float32 ``N x D``), their keys (int64) and, from the first search on, their squared norms (float32);
a search adds only :func:`~deeprank.topk`'s workspace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _C
from ..errors import IndexFormatError
from ..io import atomic_path
from ..ops.checks import check_k
from ..ops.topk import as_float32, topk
from .format import EMBEDDINGS, KEYS
from .keys import RowKeys, as_keys

__all__ = ["FlatIndex"]

_COMPACT_BLOCK_BYTES = 16 << 20  # removal moves rows a block at a time: no full-size temporary


def _as_database(obj: Any) -> np.ndarray:
    """``obj`` as float32 ``[N, D]``, keeping a float32 C-contiguous ndarray (a ``np.memmap`` too) as is."""
    if isinstance(obj, np.ndarray) and obj.dtype == np.float32 and obj.flags.c_contiguous and obj.ndim == 2:
        x = obj
    else:
        x = as_float32(obj, "database", 2)
    if x.shape[1] < 1:
        raise ValueError("database must have at least one column (D >= 1)")
    return x


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.save adds no suffix
        np.save(fh, array, allow_pickle=False)


class FlatIndex:
    """Vectors under int64 keys, searched exactly with :func:`deeprank.topk`.

    Example::

        index = deeprank.FlatIndex(embeddings)          # [N, D]; keys 0 .. N-1
        distances, keys = index.search(queries, k=10)
        index.add(more_embeddings)                      # keys N, N+1, ...
        index.remove([3, 7])

    Args:
        database: ``[N, D]`` initial vectors (``N`` may be 0 to start empty); same dtype and layout
            policy as :func:`deeprank.topk`.
        keys: int64 ``[N]`` keys of the rows, unique and non-negative (default ``0 .. N-1``).
        copy: if True (default) the index owns a float32 copy. If False, a C-contiguous float32 input
            (a memory map of a saved index, say) is used in place and never written to (do not modify
            it while the index uses it); the first :meth:`add` or :meth:`remove` moves the rows into
            storage the index owns.
    """

    backend_name = "flat"  # how an index manifest records this backend

    def __init__(self, database: Any, keys: Any = None, *, copy: bool = True) -> None:
        x = _as_database(database)
        borrowed = x is database or not x.flags.owndata  # a view of the caller's memory
        if copy and borrowed:
            x = x.copy()
        self._data = x
        self._owned = copy or not borrowed  # False: rows are the caller's; add/remove move them first
        self._size = x.shape[0]
        self._norms: np.ndarray | None = None  # computed at the first search, then kept up to date
        self._keys = RowKeys.identity(self._size) if keys is None else RowKeys(as_keys(keys, self._size))

    # ------------------------------------------------------------------ facts

    @property
    def dim(self) -> int:
        """Vector dimension ``D``."""
        return int(self._data.shape[1])

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"FlatIndex(n={self._size}, dim={self.dim})"

    @property
    def vectors(self) -> np.ndarray:
        """The stored ``[N, D]`` float32 vectors in row order (a read-only view)."""
        view = self._data[: self._size].view()
        view.flags.writeable = False
        return view

    @property
    def keys(self) -> np.ndarray:
        """The int64 key of each row of :attr:`vectors` (a read-only view)."""
        return self._keys.array

    @property
    def norms(self) -> np.ndarray:
        """Cached squared norms ``||x_i||^2``, float32 ``[N]`` (a read-only view)."""
        view = self._squared_norms()[: self._size].view()
        view.flags.writeable = False
        return view

    def _squared_norms(self) -> np.ndarray:
        if self._norms is None:
            norms = np.empty(self._data.shape[0], dtype=np.float32)
            if self._size:
                norms[: self._size] = _C.squared_norms(self._data[: self._size])
            self._norms = norms
        return self._norms

    # ------------------------------------------------------------------ changes

    def add(self, vectors: Any, keys: Any = None) -> None:
        """Append ``[n, D]`` vectors under new ``keys`` (default: consecutive after the largest key)."""
        x = as_float32(vectors, "vectors", 2)
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors must have D={self.dim} columns like the index, got D={x.shape[1]}")
        n_new = x.shape[0]
        keys = self._keys.fresh(n_new) if keys is None else as_keys(keys, n_new)
        self._keys.check_new(keys)
        if n_new == 0:
            return
        need = self._size + n_new
        if need > self._data.shape[0] or not self._owned:
            self._move(max(need, 2 * self._size, 16))  # geometric: small adds stay amortised O(1) a row
        self._data[self._size : need] = x
        if self._norms is not None:
            self._norms[self._size : need] = _C.squared_norms(x)
        self._keys.append(keys)
        self._size = need

    def remove(self, keys: Any) -> int:
        """Delete the rows of ``keys`` (``KeyError`` if one is not stored); returns the number deleted."""
        rows = self._keys.rows_of(np.unique(as_keys(keys)))
        if rows.size == 0:
            return 0
        keep = np.ones(self._size, dtype=bool)
        keep[rows] = False
        if self._owned:
            self._copy_kept(keep, self._data, self._norms)
        else:
            self._move(self._size - rows.size, keep)
        self._keys.keep(keep)
        self._size -= rows.size
        return int(rows.size)

    def _move(self, capacity: int, keep: np.ndarray | None = None) -> None:
        """Copy the (kept) rows and norms into new storage of ``capacity`` rows that the index owns."""
        data = np.empty((capacity, self.dim), dtype=np.float32)
        norms = None if self._norms is None else np.empty(capacity, dtype=np.float32)
        if keep is None:
            data[: self._size] = self._data[: self._size]
            if norms is not None:
                norms[: self._size] = self._norms[: self._size]
        else:
            self._copy_kept(keep, data, norms)
        self._data, self._norms, self._owned = data, norms, True

    def _copy_kept(self, keep: np.ndarray, data: np.ndarray, norms: np.ndarray | None) -> None:
        """Write the rows (and norms) where ``keep`` is True to the front of ``data``, in order."""
        # Kept rows only move towards the front, and each block is gathered (copied) before it is
        # written, so ``data`` may be the source itself; temporaries stay within one block.
        block = max(1, _COMPACT_BLOCK_BYTES // (4 * self.dim))
        out = 0
        for start in range(0, self._size, block):
            rows = start + np.flatnonzero(keep[start : start + block])
            data[out : out + rows.size] = self._data[rows]
            if norms is not None:
                norms[out : out + rows.size] = self._norms[rows]
            out += rows.size

    # ------------------------------------------------------------------ search

    def search(self, queries: Any, k: int, *, threads: int | None = None) -> tuple[Any, Any]:
        """``(distances, keys)`` of the ``k`` nearest stored vectors of each query row.

        Same input policy and ordering as :func:`deeprank.topk` (ties by row, i.e. insertion order);
        torch queries give torch results. ``threads`` as in :func:`deeprank.topk`.
        """
        k = check_k(k, self._size, "the number of vectors in the index")
        norms = self._squared_norms()
        dist, rows = topk(
            queries, self._data[: self._size], k, database_norms=norms[: self._size], threads=threads
        )
        if isinstance(rows, torch.Tensor):
            return dist, torch.from_numpy(self._keys.at(rows.numpy()))
        return dist, self._keys.at(rows)

    # ------------------------------------------------------------------ storage

    def save(self, directory: str | Path) -> list[str]:
        """Write ``embeddings.npy`` (and ``keys.npy`` unless row ``i`` has key ``i``); returns the names."""
        directory = Path(directory)
        _save_npy(directory / EMBEDDINGS, self.vectors)
        if self._keys.is_identity():
            return [EMBEDDINGS]
        _save_npy(directory / KEYS, self.keys)
        return [EMBEDDINGS, KEYS]

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True) -> FlatIndex:
        """Open what :meth:`save` wrote; ``mmap=True`` searches the file in place (no copy, read-only)."""
        directory = Path(directory)
        x = _load_npy(directory / EMBEDDINGS, mmap)
        if x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous or x.shape[1] < 1:
            raise IndexFormatError(
                f"{directory / EMBEDDINGS} holds {x.dtype} {x.shape}; expected float32 [n, d] in C order"
            )
        keys = None
        if (directory / KEYS).exists():
            keys = _load_npy(directory / KEYS, False)
            if keys.shape != (x.shape[0],):
                raise IndexFormatError(f"{directory / KEYS} holds {keys.shape} keys for {x.shape[0]} rows")
        try:
            index = cls(x, keys, copy=False)
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{directory / KEYS} is not a valid set of keys: {exc}") from None
        index._owned = not mmap  # a plain load is ours to grow in place; a memory map is read-only
        return index


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise IndexFormatError(f"{path} is not a readable .npy file: {exc}") from None
