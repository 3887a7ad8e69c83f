"""Approximate nearest-neighbour search through FAISS (optional dependency: ``pip install deeprank[faiss]``).

Exact search (:func:`deeprank.topk`) is the default and right up to a few million vectors; past that an
approximate index trades a little recall for speed and memory. Two kinds:

- ``"hnsw"``: ``IndexHNSWFlat`` (graph, vectors kept uncompressed; high recall, more memory).
  Options: ``m`` (graph degree, 32), ``ef_construction`` (80), ``ef_search`` (64).
- ``"ivfpq"``: ``IndexIVFPQ`` (inverted lists + product quantisation; compact). Options: ``nlist``
  (default about ``4 sqrt(N)``), ``m`` (sub-quantisers, a divisor of ``d``), ``nbits`` (8), ``nprobe`` (16).

Distances are squared Euclidean like the exact path (IVF-PQ's are approximations). Always report the
recall against exact search (:func:`recall_against_exact`) with the index you deploy.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeeprankError


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


class ApproximateIndex:
    """A FAISS index over the rows of an embedding matrix; ``search`` returns ``(distances, rows)``."""

    def __init__(self, index: Any, info: dict[str, Any]) -> None:
        self.index = index
        self.info = info

    @classmethod
    def build(cls, embeddings: np.ndarray, kind: str = "hnsw", **options: Any) -> ApproximateIndex:
        faiss = _faiss()
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"embeddings must be a non-empty [n, d] array, got shape {x.shape}")
        n, d = x.shape
        start = time.perf_counter()
        if kind == "hnsw":
            m = int(options.pop("m", 32))
            index = faiss.IndexHNSWFlat(d, m)
            index.hnsw.efConstruction = int(options.pop("ef_construction", 80))
            index.hnsw.efSearch = int(options.pop("ef_search", 64))
            index.add(x)
            params = {"m": m, "ef_search": index.hnsw.efSearch}
        elif kind == "ivfpq":
            # FAISS wants >= 39 training points per list; keep nlist small enough for the data.
            nlist = int(options.pop("nlist", max(1, min(int(4 * math.sqrt(n)), n // 39))))
            m = int(options.pop("m", _pq_subquantizers(d)))
            if d % m:
                raise ValueError(f"m={m} must divide the dimension {d}")
            nbits = int(
                options.pop("nbits", 8 if n >= 256 * 39 else max(4, min(8, int(math.log2(max(n, 16) / 39)))))
            )
            quantizer = faiss.IndexFlatL2(d)
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits)
            index.train(x)
            index.add(x)
            index.nprobe = int(options.pop("nprobe", min(16, nlist)))
            params = {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": index.nprobe}
        else:
            raise ValueError(f"kind must be 'hnsw' or 'ivfpq', got {kind!r}")
        if options:
            raise TypeError(f"unknown options for {kind}: {sorted(options)}")
        info = {"kind": kind, "count": n, "dim": d, **params, "build_seconds": time.perf_counter() - start}
        return cls(index, info)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances float32 [M, k], rows int64 [M, k])``; a row is -1 where fewer than k were found."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        dist, idx = self.index.search(q, int(k))
        return dist.astype(np.float32), idx.astype(np.int64)

    def save(self, path: str | os.PathLike) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ApproximateIndex:
        faiss = _faiss()
        index = faiss.read_index(str(path))
        kind = (
            "hnsw"
            if "HNSW" in type(index).__name__
            else "ivfpq"
            if "IVF" in type(index).__name__
            else "faiss"
        )
        return cls(index, {"kind": kind, "count": index.ntotal, "dim": index.d})


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean share of the exact top-k found by the approximate top-k (order ignored)."""
    a = np.asarray(approx_rows)
    e = np.asarray(exact_rows)
    if a.shape != e.shape or a.ndim != 2:
        raise ValueError(
            f"approx_rows and exact_rows must be [M, k] of the same shape, got {a.shape}, {e.shape}"
        )
    found = (a[:, :, None] == e[:, None, :]).any(axis=1)  # [M, k]: exact neighbour j was found
    return float(found.mean())


def recall_against_exact(
    index: Any, ann: ApproximateIndex, queries: int = 1000, k: int = 10, seed: int = 0
) -> dict:
    """Recall@k of ``ann`` against exact search of ``index`` (an :class:`deeprank.Index`), using up to
    ``queries`` random items of the index as queries; also the two search times."""
    n = len(index)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(queries, n), replace=False))
    q = np.ascontiguousarray(np.asarray(index.embeddings)[rows])
    start = time.perf_counter()
    exact = index.search(q, k).indices
    exact_s = time.perf_counter() - start
    start = time.perf_counter()
    _, approx = ann.search(q, k)
    approx_s = time.perf_counter() - start
    return {
        f"recall@{k}": recall_at_k(approx, exact),
        "queries": len(rows),
        "exact_seconds": exact_s,
        "approximate_seconds": approx_s,
    }


def write_flat_faiss(embeddings: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an exact FAISS ``IndexFlatL2`` of the embeddings (row i = item i) to ``path``."""
    faiss = _faiss()
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    faiss.write_index(index, str(path))
    return Path(path)
