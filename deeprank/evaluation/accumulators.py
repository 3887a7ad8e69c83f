"""Metrics as accumulators of neighbour blocks: one search (:mod:`.neighbours`) feeds all of them.

Each accumulator states the query ``rows`` it needs and the search width ``k`` it reads, takes blocks
through ``add(rows, indices)`` (global query rows, ``[c, >= k]`` global neighbour rows, nearest first;
wider blocks are read up to ``k``) and gives its values by ``result()``. A caller searches the union of
the rows with the largest ``k`` once and hands each block to every accumulator (:func:`feed`). Per
block an accumulator holds a few arrays of the block's shape (``[c, k]``), nothing per whole query set
beyond one value per query or triplet. Definitions are in :mod:`.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from ..ops.checks import check_k
from .neighbours import NeighbourBlock

__all__ = ["Accumulator", "RetrievalAccumulator", "TopKTripletAccumulator", "feed"]


class Accumulator(Protocol):
    rows: np.ndarray
    k: int

    def add(self, rows: np.ndarray, indices: np.ndarray) -> None: ...


def feed(blocks: Iterable[NeighbourBlock], *accumulators: Accumulator) -> None:
    """Hand every block of one search to every accumulator."""
    for block in blocks:
        for acc in accumulators:
            acc.add(block.rows, block.indices)


def _label_codes(query_labels: Any, ref_labels: Any, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    ql = np.asarray(query_labels)
    rl = np.asarray(ref_labels)
    if ql.shape != (m,):
        raise ValueError(f"query_labels must have shape ({m},), got {ql.shape}")
    if rl.shape != (n,):
        raise ValueError(f"ref_labels must have shape ({n},), got {rl.shape}")
    _, codes = np.unique(np.concatenate([ql, rl]), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    return codes[:m], codes[m:]


class RetrievalAccumulator:
    """recall@K, precision@K and MAP@K for each K, and the R-based metrics, of label-based retrieval.

    With ``map_at_r`` also pytorch-metric-learning's ``mean_average_precision_at_r``, ``r_precision``
    and ``mean_reciprocal_rank`` (over the first ``max R`` neighbours: its ``k="max_bin_count"``), and
    ``precision_at_1``. ``rows`` are the queries with at least one relevant reference (the others
    cannot score); ``k`` is the largest K, or the largest ``R`` with ``map_at_r``.
    """

    def __init__(
        self,
        query_labels: Any,
        ref_labels: Any,
        m: int,
        n: int,
        ks: Sequence[int],
        *,
        exclude_self: bool,
        map_at_r: bool,
    ) -> None:
        available, what = (
            (n - 1, "the number of other references") if exclude_self else (n, "the number of references")
        )
        self.ks = sorted({check_k(k, available, what) for k in ks} | {1})
        self._qc, self._rc = _label_codes(query_labels, ref_labels, m, n)
        classes = int(max(self._qc.max(initial=0), self._rc.max(initial=0))) + 1
        relevant = np.bincount(self._rc, minlength=classes)[self._qc]
        self._relevant = relevant - 1 if exclude_self else relevant
        self._valid = self._relevant > 0
        self.rows = np.flatnonzero(self._valid)
        self._map_at_r = map_at_r
        self.k = self.ks[-1]
        self._r_max = int(self._relevant[self.rows].max()) if self.rows.size else 1
        if map_at_r:
            self.k = max(self.k, self._r_max)  # R <= available always
        self._queries = m
        self._sums = dict.fromkeys(
            (f"{name}@{k}" for k in self.ks for name in ("recall", "precision", "map")), 0.0
        )
        self._r_sums = dict.fromkeys(
            ("mean_average_precision_at_r", "r_precision", "mean_reciprocal_rank"), 0.0
        )

    def add(self, rows: np.ndarray, indices: np.ndarray) -> None:
        keep = self._valid[rows]
        rows, idx = rows[keep], indices[keep, : self.k]
        if rows.size == 0:
            return
        rel = self._rc[idx] == self._qc[rows, None]  # [c, k]
        hits = np.cumsum(rel, axis=1, dtype=np.int64)
        positions = np.arange(1, self.k + 1, dtype=np.float64)
        ap_terms = np.cumsum(rel * (hits / positions), axis=1)  # sum_{i<=j} P(i) rel(i)
        big_r = self._relevant[rows]
        for k in self.ks:
            self._sums[f"recall@{k}"] += float((hits[:, k - 1] > 0).sum())
            self._sums[f"precision@{k}"] += float((hits[:, k - 1] / k).sum())
            self._sums[f"map@{k}"] += float((ap_terms[:, k - 1] / np.minimum(k, big_r)).sum())
        if self._map_at_r:
            at_r = (np.arange(rows.size), big_r - 1)
            self._r_sums["mean_average_precision_at_r"] += float((ap_terms[at_r] / big_r).sum())
            self._r_sums["r_precision"] += float((hits[at_r] / big_r).sum())
            first = rel[:, : self._r_max]
            found = first.any(axis=1)
            self._r_sums["mean_reciprocal_rank"] += float((found / (first.argmax(axis=1) + 1.0)).sum())

    def result(self) -> dict[str, float]:
        counted = int(self.rows.size)
        denom = max(counted, 1)
        out = {key: value / denom for key, value in self._sums.items()}
        out["precision_at_1"] = out["precision@1"]
        if self._map_at_r:
            out.update({key: value / denom for key, value in self._r_sums.items()})
        out["queries"] = float(counted)
        out["queries_without_relevant"] = float(self._queries - counted)
        return out


class TopKTripletAccumulator:
    """Score-at-top-K: each triplet whose positive or negative is among its query's ``k`` nearest
    candidates counts +1 if ranked correctly, -1 otherwise.

    ``triplets`` ``[T, 3]`` index the collection, ``correct`` ``[T]`` says ``D(q,p) < D(q,n)``; ``rows``
    are the triplets' queries. Blocks narrower than ``k`` (a group with fewer candidates) are read whole.
    """

    def __init__(self, triplets: np.ndarray, correct: np.ndarray, k: int) -> None:
        order = np.argsort(triplets[:, 0], kind="stable")  # triplets of a block are one slice
        self._triplets = triplets[order]
        self._correct = correct[order]
        self._counted = np.zeros(order.size, dtype=bool)
        self.rows = np.unique(triplets[:, 0])
        self.k = k

    def add(self, rows: np.ndarray, indices: np.ndarray) -> None:
        if rows.size == 0:
            return
        queries = self._triplets[:, 0]
        lo = int(np.searchsorted(queries, rows[0], side="left"))
        hi = int(np.searchsorted(queries, rows[-1], side="right"))
        pos = np.searchsorted(rows, queries[lo:hi]).clip(max=rows.size - 1)
        inside = rows[pos] == queries[lo:hi]  # triplets in the rows' span whose query is in the block
        picked = lo + np.flatnonzero(inside)
        top = indices[pos[inside], : self.k]
        t = self._triplets[picked]
        self._counted[picked] = (top == t[:, 1, None]).any(axis=1) | (top == t[:, 2, None]).any(axis=1)

    def result(self) -> dict[str, int]:
        good = int((self._counted & self._correct).sum())
        bad = int((self._counted & ~self._correct).sum())
        return {"score": good - bad, "counted": int(self._counted.sum()), "correct": good, "incorrect": bad}
