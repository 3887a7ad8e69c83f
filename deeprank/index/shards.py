"""Searching a sharded embedding run in place: one exact backend over many memory-mapped shards.

A run folder of :mod:`deeprank.embedding.shards` holds one ``.npy`` per shard. :class:`ShardedFlatIndex`
is a :class:`~deeprank.index.backend.Backend` over a :class:`~deeprank.index.flat.FlatIndex` per shard
(each memory-maps its file and keeps its squared norms), so nothing is copied into one array: a
search runs each shard's exact top-K and merges the answers, ties going to the earlier row as in one
``FlatIndex``. Memory: the mapped files (paged in by the OS), an int64 key and a float32 norm per
row, and ``queries x k`` results per shard during a search. ``add`` appends to an in-memory tail
part; ``remove`` copies only the shards it changes into memory (their files are never written).

:func:`open_shard_set` is what ``Index.load`` calls for such a folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..embedding.shards import read_shard_set
from ..errors import IndexFormatError
from ..io import atomic_path
from ..ops.checks import check_k
from ..ops.topk import as_float32
from .flat import FlatIndex
from .format import EMBEDDINGS, KEYS
from .keys import RowKeys, as_keys

__all__ = ["OpenedShardSet", "ShardedFlatIndex", "ShardedVectors", "open_shard_set"]


class ShardedVectors:
    """The rows of several parts seen as one read-only ``[n, dim]`` float32 array, without a copy.

    Indexing with an int, a slice or an integer array returns a numpy copy of just those rows;
    ``numpy.asarray`` (``__array__``) copies all of them (as one array must).
    """

    def __init__(self, parts: Sequence[np.ndarray], dim: int) -> None:
        self._parts = list(parts)
        self._starts = np.cumsum([0] + [p.shape[0] for p in self._parts])
        self.dtype = np.dtype(np.float32)
        self.shape = (int(self._starts[-1]), dim)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            picked = self[key[0]]  # the rows, then the columns of each
            return picked[(*(slice(None),) * (picked.ndim - 1), *key[1:])]
        if isinstance(key, slice):
            return self._gather(np.arange(*key.indices(self.shape[0])))
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.dtype.kind not in "iu":
            raise IndexError(f"rows must be integers, slices or a boolean mask, got {rows.dtype}")
        out = self._gather(rows.reshape(-1))
        return out[0] if rows.ndim == 0 else out.reshape(*rows.shape, self.shape[1])

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        n = self.shape[0]
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row out of range for {n} rows")
        rows = np.where(rows < 0, rows + n, rows).astype(np.int64)
        out = np.empty((rows.size, self.shape[1]), dtype=np.float32)
        part = np.searchsorted(self._starts, rows, side="right") - 1
        for p in np.unique(part).tolist():
            sel = part == p
            out[sel] = self._parts[p][rows[sel] - self._starts[p]]
        return out

    def chunks(self) -> list[np.ndarray]:
        """The parts in row order (views, no copy): for writers that stream the rows."""
        return list(self._parts)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate(self._parts) if self._parts else np.empty((0, self.shape[1]), np.float32)
        return out if dtype is None else out.astype(dtype, copy=False)


def _merge(best: tuple[np.ndarray, np.ndarray] | None, dist: np.ndarray, keys: np.ndarray, k: int):
    """The ``k`` smallest of ``best`` then ``(dist, keys)`` per row; a stable sort keeps earlier rows
    first among equal distances (``best`` holds earlier parts, each part answers in row order)."""
    if best is not None:
        dist = np.concatenate([best[0], dist], axis=1)
        keys = np.concatenate([best[1], keys], axis=1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(keys, order, axis=1)


class ShardedFlatIndex:
    """Exact search over parts (one :class:`FlatIndex` per shard) as one backend; module docstring.

    Args:
        parts: the parts in row order; their keys together must be unique.
    """

    def __init__(self, parts: Sequence[FlatIndex]) -> None:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("a sharded index needs at least one non-empty part")
        dims = {p.dim for p in parts}
        if len(dims) != 1:
            raise ValueError(f"parts have different dimensions: {sorted(dims)}")
        self._dim = dims.pop()
        self._parts = parts
        self._keys = RowKeys(np.concatenate([p.keys for p in parts]))  # checks uniqueness across parts
        self._tail: FlatIndex | None = None  # the in-memory part that add() appends to

    @classmethod
    def from_files(cls, arrays: Sequence[str | os.PathLike], *, mmap: bool = True) -> ShardedFlatIndex:
        """Parts over ``.npy`` files (float32 ``[n_i, d]``), keys ``0 .. n - 1`` in file order."""
        parts, first = [], 0
        for path in arrays:
            x = _load_npy(Path(path), mmap)
            parts.append(FlatIndex(x, np.arange(first, first + x.shape[0]), copy=False))
            first += x.shape[0]
        return cls(parts)

    # ------------------------------------------------------------------ facts

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"ShardedFlatIndex(n={len(self)}, dim={self.dim}, parts={len(self._parts)})"

    @property
    def parts(self) -> list[FlatIndex]:
        return list(self._parts)

    @property
    def keys(self) -> np.ndarray:
        """The int64 key of each row, parts in order (a read-only view)."""
        return self._keys.array

    @property
    def vectors(self) -> ShardedVectors:
        """All rows as one array-like (:class:`ShardedVectors`, no copy)."""
        return ShardedVectors([p.vectors for p in self._parts], self._dim)

    # ------------------------------------------------------------------ changes

    def add(self, vectors: Any, keys: Any = None) -> None:
        """Append ``[n, dim]`` vectors under new ``keys`` (default: consecutive after the largest)."""
        x = as_float32(vectors, "vectors", 2)
        if x.shape[1] != self._dim:
            raise ValueError(f"vectors must have D={self._dim} columns like the index, got D={x.shape[1]}")
        keys = self._keys.fresh(x.shape[0]) if keys is None else as_keys(keys, x.shape[0])
        self._keys.check_new(keys)
        if x.shape[0] == 0:
            return
        if self._tail is None:
            self._tail = FlatIndex(x, keys)
            self._parts.append(self._tail)
        else:
            self._tail.add(x, keys)
        self._keys.append(keys)

    def remove(self, keys: Any) -> int:
        """Delete ``keys`` (``KeyError`` if one is not stored); returns the number deleted."""
        keys = np.unique(as_keys(keys))
        rows = self._keys.rows_of(keys)
        if rows.size == 0:
            return 0
        starts = np.cumsum([0] + [len(p) for p in self._parts])
        part_of = np.searchsorted(starts, rows, side="right") - 1
        for p in np.unique(part_of).tolist():
            self._parts[p].remove(keys[part_of == p])  # a mapped shard moves into memory, alone
        keep = np.ones(len(self), dtype=bool)
        keep[rows] = False
        self._keys.keep(keep)
        self._parts = [p for p in self._parts if len(p) or p is self._tail]
        return int(rows.size)

    # ------------------------------------------------------------------ search

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, keys)`` of the ``k`` nearest rows of each query, exactly as one ``FlatIndex``."""
        k = check_k(k, len(self), "the number of vectors in the index")
        q = as_float32(queries, "queries", 2)
        best = None
        for part in self._parts:
            if len(part):
                dist, keys = part.search(q, min(k, len(part)))
                best = _merge(best, np.asarray(dist), np.asarray(keys), k)
        return best

    # ------------------------------------------------------------------ storage

    def save(self, directory: str | Path) -> list[str]:
        """Write all rows as one ``embeddings.npy`` (streamed part by part, atomically) and
        ``keys.npy`` unless row ``i`` has key ``i``: the layout :meth:`FlatIndex.load` reads."""
        directory = Path(directory)
        with atomic_path(directory / EMBEDDINGS) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(self), self._dim))
            row = 0
            for part in self._parts:
                out[row : row + len(part)] = part.vectors
                row += len(part)
            out.flush()
            del out
        if self._keys.is_identity():
            return [EMBEDDINGS]
        with atomic_path(directory / KEYS) as tmp, open(tmp, "wb") as fh:
            np.save(fh, self.keys, allow_pickle=False)
        return [EMBEDDINGS, KEYS]

    @classmethod
    def load(cls, directory: str | Path, *, verify: bool = True) -> ShardedFlatIndex:
        """The shards of the run folder ``directory``, memory-mapped (keys ``0 .. n - 1``)."""
        return cls.from_files(read_shard_set(directory, verify=verify).arrays)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        x = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise IndexFormatError(f"{path} is not a readable .npy file: {exc}") from None
    if x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous or x.shape[1] < 1:
        raise IndexFormatError(f"{path} holds {x.dtype} {x.shape}; expected float32 [n, d] in C order")
    return x


@dataclass(frozen=True)
class OpenedShardSet:
    """What an ``Index`` is made of, read from a sharded run folder (see :func:`open_shard_set`)."""

    backend: ShardedFlatIndex
    ids: list[str]
    paths: list[str]
    skipped: list[Any]
    model: dict[str, Any]  # the manifest's model facts: checkpoint, config_hash, config


def open_shard_set(root: str | os.PathLike, *, verify: bool = True) -> OpenedShardSet:
    """The parts of an index over the run folder ``root``: ids, paths and skipped files from its
    shards, the model facts from its manifest, the vectors searched in place
    (:class:`ShardedFlatIndex`). ``Index.load`` assembles them."""
    shard_set = read_shard_set(root, verify=verify)
    if not shard_set.arrays:
        raise IndexFormatError(f"{root} holds no embeddings: every file of the run was unreadable")
    exact = ShardedFlatIndex.from_files(shard_set.arrays)
    dim = int(shard_set.manifest["dim"])
    if exact.dim != dim:
        raise IndexFormatError(
            f"{root}'s shards hold {exact.dim}-dimensional vectors; the manifest says {dim}"
        )
    for part, meta, path in zip(exact.parts, shard_set.metas, shard_set.arrays, strict=True):
        if len(part) != len(meta["ids"]) or len(meta["paths"]) != len(meta["ids"]):
            raise IndexFormatError(f"{path} holds {len(part)} rows; its shard lists {len(meta['ids'])} ids")
    ids = [i for m in shard_set.metas for i in m["ids"]]
    paths = [p for m in shard_set.metas for p in m["paths"]]
    model = dict(shard_set.manifest.get("model") or {})
    return OpenedShardSet(exact, ids, paths, list(shard_set.skipped), model)
