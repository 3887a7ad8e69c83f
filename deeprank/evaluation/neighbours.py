"""The one neighbour search of evaluation: exact k nearest references, in bounded blocks of queries.

:func:`neighbour_blocks` runs :func:`deeprank.ops.topk.topk` over chunks of the query rows and yields
one :class:`NeighbourBlock` per chunk, so every metric consumes the same search block by block
(:mod:`.accumulators`) and no caller ever holds more than one block.

Memory: a block has at most ``max(1, BLOCK_ELEMENTS // (k + 1))`` query rows, so its ``[c, k + 1]``
search result stays near ``BLOCK_ELEMENTS`` entries (about 12 MB of distances and indices) whatever
the number of queries; no ``M x N`` distance matrix and no ``[M, k]`` array for the whole query set is
formed. (For 60,000 queries and ``k = 6,000`` a block is 174 queries.)

Order: rows are sorted by ascending distance, equal distances by smaller index (``topk``'s total
order), so the first ``j`` columns of a search with ``k >= j`` are the search with ``j``: one search up
to the largest cut-off serves every smaller one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..ops.checks import check_k
from ..ops.topk import topk

__all__ = ["BLOCK_ELEMENTS", "NeighbourBlock", "chunks", "neighbour_blocks"]

#: Entries of one block's ``[queries, k]`` result (and of other per-chunk arrays in evaluation).
BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class NeighbourBlock:
    """The neighbours of a chunk of queries.

    ``rows`` (int64 ``[c]``, ascending) are the query rows of the chunk; ``indices`` (int64 ``[c, k]``)
    and ``distances`` (float32 ``[c, k]``) their k nearest database rows, nearest first.
    """

    rows: np.ndarray
    indices: np.ndarray
    distances: np.ndarray


def chunks(total: int, per_row: int) -> Iterator[slice]:
    """Slices of ``range(total)`` with about ``BLOCK_ELEMENTS`` entries each at ``per_row`` entries a row."""
    step = max(1, BLOCK_ELEMENTS // max(1, per_row))
    for start in range(0, total, step):
        yield slice(start, min(total, start + step))


def _drop_self(distances: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own entry (``indices == rows``) from a ``k + 1`` search, else its last column.

    The query need not be among its ``k + 1`` nearest (duplicates at distance 0 with smaller indices
    come first); then the first ``k`` columns are already the ``k`` nearest others.
    """
    width = indices.shape[1]
    is_self = indices == rows[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), width - 1)
    keep = np.ones_like(indices, dtype=bool)
    keep[np.arange(indices.shape[0]), drop] = False
    return distances[keep].reshape(-1, width - 1), indices[keep].reshape(-1, width - 1)


def neighbour_blocks(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    rows: np.ndarray | None = None,
    threads: int | None = None,
) -> Iterator[NeighbourBlock]:
    """The ``k`` nearest ``database`` rows of each searched query, one block of queries at a time.

    Args:
        queries: ``[M, d]`` float32, C-contiguous.
        database: ``[N, d]`` float32, C-contiguous.
        k: neighbours per query, in ``[1, N]`` (``[1, N - 1]`` with ``exclude_self``).
        exclude_self: the query set is the database (query ``i`` is database row ``i``); each query's
            own row is left out of its neighbours.
        rows: ascending query rows to search (default: all ``M``); blocks are chunks of these.
        threads: passed to :func:`deeprank.ops.topk.topk`.

    Yields:
        :class:`NeighbourBlock` per chunk of ``rows``, in order.
    """
    n = database.shape[0]
    if exclude_self and queries.shape[0] != n:
        raise ValueError(
            f"exclude_self needs the query set to be the database, got {queries.shape[0]} vs {n} rows"
        )
    k = check_k(k, n - 1, "the number of other database rows") if exclude_self else check_k(k, n)
    rows = np.arange(queries.shape[0], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    width = k + 1 if exclude_self else k
    for sl in chunks(rows.size, width):
        block_rows = rows[sl]
        distances, indices = topk(queries[block_rows], database, width, threads=threads)
        if exclude_self:
            distances, indices = _drop_self(distances, indices, block_rows)
        yield NeighbourBlock(block_rows, indices, distances)
