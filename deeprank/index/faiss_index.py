"""``FaissIndex``: approximate nearest-neighbour search through FAISS (optional: ``deeprank[faiss]``).

The approximate :class:`~deeprank.index.backend.Backend`. Exact search (:class:`~deeprank.FlatIndex`)
is the default and right up to a few million vectors; past that an approximate index trades a little
recall for speed and memory. Kinds:

- ``"hnsw"``: ``IndexHNSWFlat`` (graph, vectors kept uncompressed; high recall, more memory).
  Options: ``m`` (graph degree, 32), ``ef_construction`` (80), ``ef_search`` (64).
- ``"ivfpq"``: ``IndexIVFPQ`` (inverted lists + product quantisation; compact). Options: ``nlist``
  (default about ``4 sqrt(N)``), ``m`` (sub-quantisers, a divisor of ``d``), ``nbits`` (8), ``nprobe`` (16).
- ``"flat"``: ``IndexFlatL2`` (exact; what ``Index.export(format="faiss")`` writes without an
  approximate index).

Distances are squared Euclidean like the exact path (IVF-PQ's are approximations). Vectors added after
the build are inserted into the graph / assigned to the trained lists. FAISS rows are numbered in
insertion order; this class keeps the key of each row, so the FAISS file itself is a plain index
(row ``i`` is the ``i``-th vector added). HNSW cannot delete, so :meth:`FaissIndex.remove` raises
``NotImplementedError`` for every kind (rebuild instead). Always report the recall against exact
search (:func:`deeprank.index.backend.recall_against_exact`) with the index you deploy.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeeprankError, IndexFormatError
from ..io import atomic_path
from ..ops.topk import as_float32
from .format import APPROXIMATE, APPROXIMATE_KEYS
from .keys import RowKeys, as_keys

__all__ = ["KINDS", "FaissIndex"]

KINDS = ("hnsw", "ivfpq", "flat")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise DeeprankError(
            "approximate search needs FAISS: pip install 'deeprank[faiss]' (or faiss-cpu)"
        ) from None
    return faiss


def _pq_subquantizers(dim: int) -> int:
    """The largest divisor of ``dim`` that is at most ``min(64, dim // 2)`` (about 2+ dims per code)."""
    for m in range(min(64, max(1, dim // 2)), 0, -1):
        if dim % m == 0:
            return m
    return 1


def _hnsw(faiss: Any, x: np.ndarray, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    m = int(options.pop("m", 32))
    index = faiss.IndexHNSWFlat(x.shape[1], m)
    index.hnsw.efConstruction = int(options.pop("ef_construction", 80))
    index.hnsw.efSearch = int(options.pop("ef_search", 64))
    index.add(x)
    return index, {"m": m, "ef_search": index.hnsw.efSearch}


def _ivfpq(faiss: Any, x: np.ndarray, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    n, d = x.shape
    # FAISS wants >= 39 training points per list; keep nlist small enough for the data.
    nlist = int(options.pop("nlist", max(1, min(int(4 * math.sqrt(n)), n // 39))))
    m = int(options.pop("m", _pq_subquantizers(d)))
    if d % m:
        raise ValueError(f"m={m} must divide the dimension {d}")
    default_bits = 8 if n >= 256 * 39 else max(4, min(8, int(math.log2(max(n, 16) / 39))))
    nbits = int(options.pop("nbits", default_bits))
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, nlist, m, nbits)
    index.train(x)
    index.add(x)
    index.nprobe = int(options.pop("nprobe", min(16, nlist)))
    return index, {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": index.nprobe}


def _flat(faiss: Any, x: np.ndarray, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    return index, {}


_BUILDERS = {"hnsw": _hnsw, "ivfpq": _ivfpq, "flat": _flat}


def _kind_of(index: Any) -> str:
    name = type(index).__name__
    return "hnsw" if "HNSW" in name else "ivfpq" if "IVF" in name else "flat" if "Flat" in name else "faiss"


class FaissIndex:
    """A FAISS index over keyed vectors; ``search`` returns ``(distances, keys)``.

    Build one with :meth:`build`; ``info`` holds the kind, size, parameters and build time.
    """

    def __init__(self, index: Any, keys: RowKeys, info: dict[str, Any]) -> None:
        if len(keys) != index.ntotal:
            raise ValueError(f"got {len(keys)} keys for a FAISS index of {index.ntotal} vectors")
        self.index = index
        self.info = info
        self._keys = keys

    @classmethod
    def build(cls, vectors: Any, keys: Any = None, kind: str = "hnsw", **options: Any) -> FaissIndex:
        """Build a ``kind`` index (see the module docstring) over ``vectors`` ``[n, d]``, ``n >= 1``."""
        if kind not in _BUILDERS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
        faiss = _faiss()
        x = as_float32(vectors, "vectors", 2)
        if x.shape[0] == 0 and kind != "flat":  # graphs and trained lists need data
            raise ValueError(f"vectors must be a non-empty [n, d] array, got shape {x.shape}")
        row_keys = RowKeys.identity(x.shape[0]) if keys is None else RowKeys(as_keys(keys, x.shape[0]))
        start = time.perf_counter()
        index, params = _BUILDERS[kind](faiss, x, options)
        if options:
            raise TypeError(f"unknown options for {kind}: {sorted(options)}")
        n, d = x.shape
        info = {"kind": kind, "count": n, "dim": d, **params, "build_seconds": time.perf_counter() - start}
        return cls(index, row_keys, info)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return f"FaissIndex(kind={self.info.get('kind')!r}, n={len(self)}, dim={self.dim})"

    def add(self, vectors: Any, keys: Any = None) -> None:
        """Insert ``[n, d]`` vectors under new ``keys`` (default: consecutive after the largest key)."""
        x = as_float32(vectors, "vectors", 2)
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors must have D={self.dim} columns like the index, got D={x.shape[1]}")
        keys = self._keys.fresh(x.shape[0]) if keys is None else as_keys(keys, x.shape[0])
        self._keys.check_new(keys)
        if x.shape[0]:
            self.index.add(x)
            self._keys.append(keys)

    def remove(self, keys: Any) -> int:
        """Not supported (HNSW graphs cannot delete): raises ``NotImplementedError``; rebuild instead."""
        raise NotImplementedError(f"a FAISS {self.info.get('kind')} index cannot remove vectors; rebuild it")

    def search(self, vectors: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances float32 [M, k], keys int64 [M, k])``; a key is -1 where fewer than k were found."""
        q = as_float32(vectors, "vectors", 2)
        dist, rows = self.index.search(q, int(k))
        return dist.astype(np.float32, copy=False), self._keys.at(rows)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the FAISS index (rows in insertion order, no keys) to the file ``path``, atomically."""
        with atomic_path(path) as tmp:
            _faiss().write_index(self.index, str(tmp))
        return Path(path)

    def save(self, directory: str | Path) -> list[str]:
        """Write ``approximate.faiss`` (and ``approximate.keys.npy`` unless row ``i`` has key ``i``)."""
        directory = Path(directory)
        self.write(directory / APPROXIMATE)
        if self._keys.is_identity():
            return [APPROXIMATE]
        with atomic_path(directory / APPROXIMATE_KEYS) as tmp, open(tmp, "wb") as fh:
            np.save(fh, self._keys.array, allow_pickle=False)
        return [APPROXIMATE, APPROXIMATE_KEYS]

    @classmethod
    def load(cls, directory: str | Path) -> FaissIndex:
        """Open what :meth:`save` wrote."""
        directory = Path(directory)
        faiss = _faiss()
        try:
            index = faiss.read_index(str(directory / APPROXIMATE))
        except RuntimeError as exc:
            raise IndexFormatError(
                f"{directory / APPROXIMATE} is not a readable FAISS index: {exc}"
            ) from None
        keys = RowKeys.identity(index.ntotal)
        if (directory / APPROXIMATE_KEYS).exists():
            try:
                keys = RowKeys(np.load(directory / APPROXIMATE_KEYS, allow_pickle=False))
            except (TypeError, ValueError, OSError) as exc:
                raise IndexFormatError(
                    f"{directory / APPROXIMATE_KEYS} is not a valid set of keys: {exc}"
                ) from None
        info = {"kind": _kind_of(index), "count": int(index.ntotal), "dim": int(index.d)}
        try:
            return cls(index, keys, info)
        except ValueError as exc:
            raise IndexFormatError(f"{directory / APPROXIMATE_KEYS}: {exc}") from None
