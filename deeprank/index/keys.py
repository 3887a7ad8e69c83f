"""``RowKeys``: the int64 key of each stored row, and the key -> row lookup every keyed store needs.

Keys are non-negative int64 (``-1`` marks "no result" in search answers), unique within a store. The
usual case, keys appended in increasing order (what :class:`deeprank.Index` does), is looked up by
binary search on the keys themselves; any other order is looked up through a sorted permutation,
built when needed. Storage grows geometrically, so appending in small steps is amortised O(1) per key.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RowKeys", "as_keys"]


def as_keys(obj: Any, n: int | None = None, name: str = "keys") -> np.ndarray:
    """``obj`` as a 1-D int64 array of non-negative keys (of length ``n`` when given)."""
    arr = np.asarray(obj)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.size == 0 and arr.ndim == 1:
        arr = arr.astype(np.int64)  # [] comes as float64
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise TypeError(f"{name} must be a 1-D array of integers, got {arr.dtype} with shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"got {arr.shape[0]} {name} for {n} vectors")
    if arr.size and (arr.min() < 0 or (arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max)):
        raise ValueError(f"{name} must be non-negative int64 values (-1 marks a missing result)")
    return np.ascontiguousarray(arr, dtype=np.int64)


class RowKeys:
    """The keys of rows ``0 .. len - 1`` of a store, in row order."""

    def __init__(self, keys: Any) -> None:
        keys = as_keys(keys)
        self._ascending = bool(np.all(np.diff(keys) > 0))
        if not self._ascending and np.unique(keys).size != keys.size:  # increasing keys are distinct
            raise ValueError("keys must be unique")
        self._buf = keys.copy()
        self._size = keys.size
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (argsort, sorted keys) if not ascending

    @classmethod
    def identity(cls, n: int) -> RowKeys:
        """Keys ``0 .. n - 1`` (row ``i`` has key ``i``)."""
        return cls(np.arange(n, dtype=np.int64))

    def __len__(self) -> int:
        return self._size

    @property
    def array(self) -> np.ndarray:
        """The keys in row order, int64 ``[len]`` (a read-only view)."""
        view = self._buf[: self._size].view()
        view.flags.writeable = False
        return view

    @property
    def ascending(self) -> bool:
        """Whether the keys increase row by row."""
        return self._ascending

    def is_identity(self) -> bool:
        """Whether row ``i`` has key ``i`` for every row (then files need not store the keys)."""
        return self._ascending and (self._size == 0 or int(self._buf[self._size - 1]) == self._size - 1)

    def fresh(self, n: int) -> np.ndarray:
        """``n`` new keys, consecutive after the largest key (from 0 when empty)."""
        live = self._buf[: self._size]
        first = 0 if self._size == 0 else int(live[-1] if self._ascending else live.max()) + 1
        return np.arange(first, first + n, dtype=np.int64)

    def check_new(self, keys: np.ndarray) -> None:
        """Raise ``ValueError`` unless ``keys`` are distinct and none is stored yet."""
        if keys.size == 0:
            return
        if self._extends_ascending(keys):
            return  # increasing and above every stored key: new and distinct
        if np.unique(keys).size != keys.size:
            raise ValueError("keys must be unique")
        clash = keys[self._find(keys) >= 0]
        if clash.size:
            raise ValueError(f"keys already in the index: {clash[:5].tolist()}")

    def append(self, keys: np.ndarray) -> None:
        """Store ``keys`` (checked by :meth:`check_new` first) for the next rows."""
        need = self._size + keys.size
        if need > self._buf.size:
            grown = np.empty(max(need, 2 * self._size, 16), dtype=np.int64)
            grown[: self._size] = self._buf[: self._size]
            self._buf = grown
        self._ascending = self._extends_ascending(keys)
        self._buf[self._size : need] = keys
        self._size = need
        self._sorted = None

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """The rows holding ``keys`` (int64, same shape); ``KeyError`` names keys that are not stored."""
        rows = self._find(keys)
        if np.any(rows < 0):
            raise KeyError(f"keys not in the index: {keys[rows < 0][:5].tolist()}")
        return rows

    def at(self, rows: np.ndarray) -> np.ndarray:
        """The keys of ``rows`` (any shape); a row of ``-1`` (no result) stays ``-1``."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.is_identity():
            return rows  # key i is row i (and -1 stays -1)
        out = self._buf[np.where(rows < 0, 0, rows)]
        out[rows < 0] = -1
        return out

    def keep(self, mask: np.ndarray) -> None:
        """Drop the rows where ``mask`` is False; the kept rows close up in order."""
        kept = self._buf[: self._size][mask]
        self._buf[: kept.size] = kept
        self._size = kept.size
        self._sorted = None

    def _extends_ascending(self, keys: np.ndarray) -> bool:
        if not self._ascending or (keys.size > 1 and not np.all(np.diff(keys) > 0)):
            return False
        return self._size == 0 or keys.size == 0 or int(keys[0]) > int(self._buf[self._size - 1])

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys``, ``-1`` where a key is not stored."""
        if self._size == 0:
            return np.full(np.shape(keys), -1, dtype=np.int64)
        live = self._buf[: self._size]
        if self._ascending:
            order, sorted_keys = None, live
        else:
            if self._sorted is None:
                perm = np.argsort(live, kind="stable")
                self._sorted = perm, live[perm]
            order, sorted_keys = self._sorted
        pos = np.minimum(np.searchsorted(sorted_keys, keys), self._size - 1)
        rows = pos if order is None else order[pos]
        return np.where(sorted_keys[pos] == keys, rows, -1).astype(np.int64)
