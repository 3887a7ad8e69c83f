"""Evaluation: similarity precision, score-at-top-K, retrieval metrics, triplet ranks, crop retrieval.

All distances are the paper's squared Euclidean ``D(a, b) = ||a - b||^2`` on embeddings. Nearest
neighbour work is the one blocked search of :mod:`.neighbours`, consumed by the accumulators of
:mod:`.accumulators`, so no function here ever holds an ``M x N`` distance matrix or an ``[M, k]``
neighbour array for whole sets (memory stays bounded for 60,000 x 60,000 and beyond). Every ``k`` a
user gives is checked by :func:`deeprank.ops.checks.check_k`.

Definitions (``Q`` queries, labels ``y``; "relevant" means "same label as the query"):

- **similarity precision** (paper): share of labelled triplets ``(q, p, n)`` with ``D(q,p) < D(q,n)``.
  Ties count as incorrect.
- **score-at-top-K** (paper, K = 30): for each query, rank the candidate images of its group (all
  images of the query's group, the query itself left out); every triplet of that query whose positive
  or negative lies in the query's top K counts +1 if ``D(q,p) < D(q,n)`` and -1 otherwise (a group
  with fewer than K other images: all of them).
- **recall@K**: share of queries with at least one relevant item among their K nearest references.
- **precision@K**: mean share of relevant items among the K nearest references (precision@1 is the
  share of queries whose nearest reference is relevant).
- **MAP@R** (Musgrave, Belongie & Lim, "A Metric Learning Reality Check", 2020): with ``R`` the
  number of relevant references of a query, ``AP@R = (1/R) sum_{i=1..R} P(i) rel(i)`` where ``rel(i)``
  is 1 if the i-th nearest reference is relevant and ``P(i)`` the precision among the first ``i``;
  MAP@R is the mean over queries.
- **MAP@K**: ``AP@K = (1/min(K, R)) sum_{i=1..K} P(i) rel(i)``, averaged over queries.
- **R-precision**: the mean share of relevant items among the ``R`` nearest references.
- **mean reciprocal rank**: the mean of ``1 / rank`` of the first relevant reference among the
  ``max R`` nearest (0 when none is).

Names: ``precision_at_1``, ``mean_average_precision_at_r``, ``r_precision`` and
``mean_reciprocal_rank`` are pytorch-metric-learning's ``AccuracyCalculator`` names (same values,
tested against it; the reciprocal rank as with its ``k="max_bin_count"``); ``recall@K``,
``precision@K`` and ``map@K`` are the cut-off families.

With ``exclude_self=True`` the query set is the reference set (row ``i`` of both is the same item):
each query's own entry is removed from its neighbours and from its ``R``. Queries with no relevant
reference at all (``R = 0``) cannot score and are left out of every retrieval metric; their number is
reported as ``queries_without_relevant``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..ops.checks import check_k
from .accumulators import RetrievalAccumulator, TopKTripletAccumulator, feed
from .neighbours import chunks, neighbour_blocks

__all__ = [
    "as_matrix",
    "crop_retrieval",
    "retrieval_metrics",
    "score_at_top_k",
    "share_correct",
    "similarity_precision",
    "triplet_array",
    "triplet_distances",
    "triplet_ranks",
    "triplets_correct",
]


def as_matrix(x: Any, name: str) -> np.ndarray:
    """``x`` as a C-contiguous, finite float32 ``[n, d]`` array (errors name ``name``)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d], got shape {a.shape}")
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def triplet_array(triplets: Any, n: int) -> np.ndarray:
    """``triplets`` as int64 ``[T, 3]`` rows ``(query, positive, negative)`` indexing ``n`` items."""
    t = np.asarray(triplets)
    if t.ndim != 2 or t.shape[1] != 3 or t.dtype.kind not in "iu":
        raise ValueError(
            f"triplets must be an integer array [T, 3] of (query, positive, negative), got {t.shape}"
        )
    t = t.astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= n):
        raise ValueError(f"triplet indices must be in [0, {n}), got range [{t.min()}, {t.max()}]")
    return t


def _row_distances(
    a: np.ndarray, a_rows: np.ndarray | None, b: np.ndarray, b_rows: np.ndarray | None
) -> np.ndarray:
    """``D(a[a_rows[i]], b[b_rows[i]])`` for each ``i`` (``None``: rows in order), float64, chunked.

    Differences are taken first, in float64: no cancellation."""
    count = a.shape[0] if a_rows is None else a_rows.size
    out = np.empty(count, dtype=np.float64)
    for sl in chunks(count, a.shape[1]):
        x = (a[sl] if a_rows is None else a[a_rows[sl]]).astype(np.float64)
        out[sl] = ((x - (b[sl] if b_rows is None else b[b_rows[sl]])) ** 2).sum(axis=1)
    return out


def triplet_distances(q: Any, p: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(D(q,p), D(q,n))`` per triplet row, in float64 (differences first: no cancellation)."""
    qa, pa, na = as_matrix(q, "q"), as_matrix(p, "p"), as_matrix(n, "n")
    if not (qa.shape == pa.shape == na.shape):
        raise ValueError(f"q, p and n must have the same shape, got {qa.shape}, {pa.shape}, {na.shape}")
    return _row_distances(qa, None, pa, None), _row_distances(qa, None, na, None)


def triplets_correct(embeddings: np.ndarray, triplets: np.ndarray) -> np.ndarray:
    """``D(q,p) < D(q,n)`` per row of validated ``triplets`` indexing ``embeddings`` (bool ``[T]``).

    Computed once per method, it feeds both similarity precision and score-at-top-K."""
    q = triplets[:, 0]
    return _row_distances(embeddings, q, embeddings, triplets[:, 1]) < _row_distances(
        embeddings, q, embeddings, triplets[:, 2]
    )


def share_correct(correct: np.ndarray) -> float:
    """Similarity precision from each triplet's ``D(q,p) < D(q,n)``."""
    if correct.size == 0:
        raise ValueError("similarity_precision needs at least one triplet")
    return float(correct.mean())


def similarity_precision(q: Any, p: Any, n: Any) -> float:
    """Share of triplets ranked correctly, ``D(q,p) < D(q,n)`` (ties are incorrect).

    ``q``, ``p``, ``n`` are ``[T, d]`` embeddings of the query, positive and negative of each triplet.
    """
    dqp, dqn = triplet_distances(q, p, n)
    return share_correct(dqp < dqn)


def score_at_top_k(
    embeddings: Any,
    triplets: Any,
    k: int = 30,
    groups: Any = None,
    *,
    return_counts: bool = False,
    threads: int | None = None,
) -> int | dict[str, int]:
    """The paper's score-at-top-K over labelled triplets.

    Args:
        embeddings: ``[N, d]`` embeddings of every image the triplets refer to.
        triplets: ``[T, 3]`` integer rows ``(query, positive, negative)`` indexing ``embeddings``.
        k: the cut-off (the paper uses 30), in ``[1, N]``; a group with fewer than ``k`` other images
            has all of them in its top K.
        groups: ``[N]`` group label per image; a query's candidates are the images of its group (the
            paper's "1000 images of the query's class"). ``None``: all images form one group.
        return_counts: return ``{"score", "counted", "correct", "incorrect"}`` instead of the score.

    Returns:
        ``correct - incorrect`` over the triplets whose positive or negative is in the query's top K.
    """
    emb = as_matrix(embeddings, "embeddings")
    n = emb.shape[0]
    t = triplet_array(triplets, n)
    k = check_k(k, n, "the number of embeddings")
    g = (
        np.zeros(n, dtype=np.int64)
        if groups is None
        else np.unique(np.asarray(groups), return_inverse=True)[1]
    )
    if g.shape != (n,):
        raise ValueError(f"groups must have one label per embedding ({n}), got shape {np.shape(groups)}")
    acc = TopKTripletAccumulator(t, triplets_correct(emb, t), k)
    query_group = g[acc.rows]
    for group in np.unique(query_group):  # one search per group: its candidates are its members
        members = np.flatnonzero(g == group)
        if members.size < 2:
            continue
        rows = np.searchsorted(members, acc.rows[query_group == group])  # queries are members
        sub = emb if members.size == n else emb[members]
        kk = min(k, members.size - 1)
        for block in neighbour_blocks(sub, sub, kk, exclude_self=True, rows=rows, threads=threads):
            acc.add(members[block.rows], members[block.indices])
    counts = acc.result()
    return counts if return_counts else counts["score"]


def _pair(query_emb: Any, ref_emb: Any) -> tuple[np.ndarray, np.ndarray]:
    q = as_matrix(query_emb, "query_emb")
    r = as_matrix(ref_emb, "ref_emb")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query_emb has dimension {q.shape[1]} but ref_emb has {r.shape[1]}")
    return q, r


def retrieval_metrics(
    query_emb: Any,
    query_labels: Any,
    ref_emb: Any,
    ref_labels: Any,
    ks: Sequence[int] = (1, 5, 10, 100),
    exclude_self: bool = False,
    *,
    map_at_r: bool = True,
    threads: int | None = None,
) -> dict[str, float]:
    """Label-based retrieval quality of embeddings (definitions in the module docstring).

    Args:
        query_emb: ``[M, d]`` query embeddings.
        query_labels: ``[M]`` labels (any comparable type).
        ref_emb: ``[N, d]`` reference embeddings.
        ref_labels: ``[N]`` labels.
        ks: cut-offs for ``recall@K``, ``precision@K`` and ``map@K``, each in ``[1, N]`` (``[1, N - 1]``
            with ``exclude_self``).
        exclude_self: the query set is the reference set; each query's own row is left out.
        map_at_r: also compute MAP@R (searches up to the largest ``R``, the costliest part).
        threads: passed to :func:`deeprank.topk`.

    Returns:
        ``{"recall@K", "precision@K", "map@K" for each K, "precision_at_1", and with ``map_at_r``
        "mean_average_precision_at_r", "r_precision", "mean_reciprocal_rank"; "queries",
        "queries_without_relevant"}`` as floats (ratios in [0, 1]). The underscore names are
        pytorch-metric-learning's ``AccuracyCalculator`` names, with its definitions.
    """
    q, r = _pair(query_emb, ref_emb)
    m, n = q.shape[0], r.shape[0]
    if exclude_self and m != n:
        raise ValueError(f"exclude_self needs the query set to be the reference set, got {m} vs {n} rows")
    acc = RetrievalAccumulator(
        query_labels, ref_labels, m, n, ks, exclude_self=exclude_self, map_at_r=map_at_r
    )
    feed(neighbour_blocks(q, r, acc.k, exclude_self=exclude_self, rows=acc.rows, threads=threads), acc)
    return acc.result()


def triplet_ranks(embeddings: Any, triplets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rank of the positive and of the negative in each triplet's query ranking of the whole collection.

    The ranking is over all of ``embeddings`` except the query itself; rank 1 is the nearest. An item's
    rank is 1 + the number of items strictly closer to the query. This is the applied report's
    heat-map input: a good embedding puts most triplets at ``rank_p < rank_n``.

    Returns ``(rank_positive, rank_negative)``, int64 ``[T]`` each.
    """
    emb = as_matrix(embeddings, "embeddings")
    n = emb.shape[0]
    t = triplet_array(triplets, n)
    x = torch.from_numpy(emb).double()
    norms = (x * x).sum(dim=1)
    rank_p = np.empty(t.shape[0], dtype=np.int64)
    rank_n = np.empty(t.shape[0], dtype=np.int64)
    for sl in chunks(t.shape[0], n):  # a [chunk, N] block of full rankings, never [T, N]
        rows = torch.from_numpy(t[sl])
        qv = x[rows[:, 0]]
        d = norms[rows[:, 0], None] + norms[None, :] - 2.0 * (qv @ x.T)  # [c, N], float64
        d[torch.arange(rows.shape[0]), rows[:, 0]] = math.inf  # the query is not its own candidate
        dp = d.gather(1, rows[:, 1:2])
        dn = d.gather(1, rows[:, 2:3])
        rank_p[sl] = ((d < dp).sum(dim=1) + 1).numpy()
        rank_n[sl] = ((d < dn).sum(dim=1) + 1).numpy()
    return rank_p, rank_n


def crop_retrieval(
    crop_emb: Any, source_index: Any, ref_emb: Any, ks: Sequence[int] = (1, 5, 10), threads: int | None = None
) -> dict[str, float]:
    """Crop-to-source retrieval: share of crop queries whose source image is in the top K references.

    Args:
        crop_emb: ``[M, d]`` embeddings of the crops.
        source_index: ``[M]`` row of ``ref_emb`` each crop was cut from.
        ref_emb: ``[N, d]`` embeddings of the full images.
        ks: cut-offs, each in ``[1, N]``.

    Returns ``{"crop_recall@K": ...}`` for each K.
    """
    q, r = _pair(crop_emb, ref_emb)
    src = np.asarray(source_index)
    if src.shape != (q.shape[0],) or (src.size and src.dtype.kind not in "iu"):
        raise ValueError(f"source_index must be integers of shape ({q.shape[0]},), got {src.shape}")
    src = src.astype(np.int64)
    ks = sorted({check_k(k, r.shape[0], "the number of references") for k in ks})
    found = np.full(q.shape[0], np.iinfo(np.int64).max)  # rank of the source, if within the largest K
    for block in neighbour_blocks(q, r, ks[-1], threads=threads):
        hit = block.indices == src[block.rows, None]
        found[block.rows] = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, found[block.rows])
    return {f"crop_recall@{k}": float((found <= k).mean()) for k in ks}
