"""Evaluation: similarity precision, score-at-top-K, retrieval metrics, triplet ranks, crop retrieval.

All distances are the paper's squared Euclidean ``D(a, b) = ||a - b||^2`` on embeddings. Nearest
neighbour work goes through :func:`deeprank.topk` in query chunks, so no function here ever holds an
``M x N`` distance matrix for whole sets (memory stays bounded for 10,000 x 60,000 and beyond).

Definitions (``Q`` queries, labels ``y``; "relevant" means "same label as the query"):

- **similarity precision** (paper): share of labelled triplets ``(q, p, n)`` with ``D(q,p) < D(q,n)``.
  Ties count as incorrect.
- **score-at-top-K** (paper, K = 30): for each query, rank the candidate images of its group (all
  images of the query's group, the query itself left out); every triplet of that query whose positive
  or negative lies in the query's top K counts +1 if ``D(q,p) < D(q,n)`` and -1 otherwise.
- **recall@K**: share of queries with at least one relevant item among their K nearest references.
- **precision@K**: mean share of relevant items among the K nearest references (precision@1 is the
  share of queries whose nearest reference is relevant).
- **MAP@R** (Musgrave, Belongie & Lim, "A Metric Learning Reality Check", 2020): with ``R`` the
  number of relevant references of a query, ``AP@R = (1/R) sum_{i=1..R} P(i) rel(i)`` where ``rel(i)``
  is 1 if the i-th nearest reference is relevant and ``P(i)`` the precision among the first ``i``;
  MAP@R is the mean over queries.
- **MAP@K**: ``AP@K = (1/min(K, R)) sum_{i=1..K} P(i) rel(i)``, averaged over queries.

With ``exclude_self=True`` the query set is the reference set (row ``i`` of both is the same item):
each query's own entry is removed from its neighbours and from its ``R``. Queries with no relevant
reference at all (``R = 0``) cannot score and are left out of every retrieval metric; their number is
reported as ``queries_without_relevant``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..ops.topk import topk

__all__ = [
    "as_matrix",
    "crop_retrieval",
    "retrieval_metrics",
    "score_at_top_k",
    "similarity_precision",
    "triplet_array",
    "triplet_distances",
    "triplet_ranks",
]

_BLOCK_ELEMENTS = 1 << 20


def as_matrix(x: Any, name: str) -> np.ndarray:
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


def _neighbours(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    self_index: np.ndarray | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``topk`` that optionally drops each query's own row of the database.

    ``self_index[i]`` is the database row that query ``i`` is (or -1). We search ``k + 1`` and drop that
    row where it appears, otherwise the last column, so every row keeps exactly ``k`` entries.
    """
    if self_index is None:
        return topk(queries, database, k, threads=threads)
    n = database.shape[0]
    kk = min(k + 1, n)
    dist, idx = topk(queries, database, kk, threads=threads)
    if kk == k:  # nothing to drop beyond k: only possible when k == n, self must then be removed
        raise ValueError(f"k={k} leaves no room to exclude the query itself among {n} references")
    is_self = idx == self_index[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), kk - 1)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(idx.shape[0]), drop] = False
    return dist[keep].reshape(-1, k), idx[keep].reshape(-1, k)


def _chunks(total: int, per_row: int) -> Iterator[slice]:
    step = max(1, _BLOCK_ELEMENTS // max(1, per_row))
    for start in range(0, total, step):
        yield slice(start, min(total, start + step))


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
        ks: cut-offs for ``recall@K``, ``precision@K`` and ``map@K``.
        exclude_self: the query set is the reference set; each query's own row is left out.
        map_at_r: also compute MAP@R (searches up to the largest ``R``, the costliest part).
        threads: passed to :func:`deeprank.topk`.

    Returns:
        ``{"recall@K", "precision@K", "map@K" for each K, "precision@1", "map@r" (if asked),
        "queries", "queries_without_relevant"}`` as floats (ratios in [0, 1]).
    """
    q = as_matrix(query_emb, "query_emb")
    r = as_matrix(ref_emb, "ref_emb")
    m, n = q.shape[0], r.shape[0]
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query_emb has dimension {q.shape[1]} but ref_emb has {r.shape[1]}")
    if exclude_self and m != n:
        raise ValueError(f"exclude_self needs the query set to be the reference set, got {m} vs {n} rows")
    ks = sorted({int(k) for k in ks} | {1})
    available = n - 1 if exclude_self else n
    if ks[0] < 1 or ks[-1] > available:
        raise ValueError(f"every k in ks must be in [1, {available}] (the references searchable), got {ks}")
    qc, rc = _label_codes(query_labels, ref_labels, m, n)
    relevant = np.bincount(rc, minlength=int(max(qc.max(initial=0), rc.max(initial=0))) + 1)[qc]
    if exclude_self:
        relevant = relevant - 1
    valid = relevant > 0
    kmax = ks[-1]
    if map_at_r and valid.any():
        kmax = max(kmax, int(relevant[valid].max()))
    kmax = min(kmax, available)

    sums = {f"{name}@{k}": 0.0 for k in ks for name in ("recall", "precision", "map")}
    map_r_sum = 0.0
    positions = np.arange(1, kmax + 1, dtype=np.float64)
    self_rows = np.arange(m, dtype=np.int64) if exclude_self else None
    for sl in _chunks(m, kmax + 1):
        rows = np.flatnonzero(valid[sl]) + sl.start
        if rows.size == 0:
            continue
        _, idx = _neighbours(q[rows], r, kmax, None if self_rows is None else self_rows[rows], threads)
        rel = rc[idx] == qc[rows, None]  # [c, kmax]
        hits = np.cumsum(rel, axis=1, dtype=np.int64)
        ap_terms = np.cumsum(rel * (hits / positions), axis=1)  # sum_{i<=j} P(i) rel(i)
        big_r = relevant[rows]
        for k in ks:
            sums[f"recall@{k}"] += float((hits[:, k - 1] > 0).sum())
            sums[f"precision@{k}"] += float((hits[:, k - 1] / k).sum())
            sums[f"map@{k}"] += float((ap_terms[:, k - 1] / np.minimum(k, big_r)).sum())
        if map_at_r:
            map_r_sum += float((ap_terms[np.arange(rows.size), big_r - 1] / big_r).sum())
    counted = int(valid.sum())
    denom = max(counted, 1)
    out = {key: value / denom for key, value in sums.items()}
    if map_at_r:
        out["map@r"] = map_r_sum / denom
    out["queries"] = float(counted)
    out["queries_without_relevant"] = float(m - counted)
    return out


def triplet_distances(q: Any, p: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(D(q,p), D(q,n))`` per triplet row, in float64 (differences first: no cancellation)."""
    qa, pa, na = as_matrix(q, "q"), as_matrix(p, "p"), as_matrix(n, "n")
    if not (qa.shape == pa.shape == na.shape):
        raise ValueError(f"q, p and n must have the same shape, got {qa.shape}, {pa.shape}, {na.shape}")
    dqp = np.empty(qa.shape[0], dtype=np.float64)
    dqn = np.empty(qa.shape[0], dtype=np.float64)
    for sl in _chunks(qa.shape[0], qa.shape[1]):
        qd = qa[sl].astype(np.float64)
        dqp[sl] = ((qd - pa[sl]) ** 2).sum(axis=1)
        dqn[sl] = ((qd - na[sl]) ** 2).sum(axis=1)
    return dqp, dqn


def similarity_precision(q: Any, p: Any, n: Any) -> float:
    """Share of triplets ranked correctly, ``D(q,p) < D(q,n)`` (ties are incorrect).

    ``q``, ``p``, ``n`` are ``[T, d]`` embeddings of the query, positive and negative of each triplet.
    """
    dqp, dqn = triplet_distances(q, p, n)
    if dqp.size == 0:
        raise ValueError("similarity_precision needs at least one triplet")
    return float((dqp < dqn).mean())


def triplet_array(triplets: Any, n: int) -> np.ndarray:
    t = np.asarray(triplets)
    if t.ndim != 2 or t.shape[1] != 3 or t.dtype.kind not in "iu":
        raise ValueError(
            f"triplets must be an integer array [T, 3] of (query, positive, negative), got {t.shape}"
        )
    t = t.astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= n):
        raise ValueError(f"triplet indices must be in [0, {n}), got range [{t.min()}, {t.max()}]")
    return t


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
        k: the cut-off (the paper uses 30).
        groups: ``[N]`` group label per image; a query's candidates are the images of its group (the
            paper's "1000 images of the query's class"). ``None``: all images form one group.
        return_counts: return ``{"score", "counted", "correct", "incorrect"}`` instead of the score.

    Returns:
        ``correct - incorrect`` over the triplets whose positive or negative is in the query's top K.
    """
    emb = as_matrix(embeddings, "embeddings")
    n = emb.shape[0]
    t = triplet_array(triplets, n)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    g = (
        np.zeros(n, dtype=np.int64)
        if groups is None
        else np.unique(np.asarray(groups), return_inverse=True)[1]
    )
    if g.shape != (n,):
        raise ValueError(f"groups must have one label per embedding ({n}), got shape {np.shape(groups)}")
    dqp, dqn = triplet_distances(emb[t[:, 0]], emb[t[:, 1]], emb[t[:, 2]])
    correct = dqp < dqn
    counted = np.zeros(t.shape[0], dtype=bool)
    query_group = g[t[:, 0]]
    for group in np.unique(query_group):
        members = np.flatnonzero(g == group)
        if members.size < 2:
            continue
        in_group = np.flatnonzero(query_group == group)
        queries = np.unique(t[in_group, 0])
        kk = min(k, members.size - 1)
        self_pos = np.searchsorted(members, queries)  # queries are members of their own group
        top = np.empty((queries.size, kk), dtype=np.int64)
        for sl in _chunks(queries.size, kk + 1):
            _, local = _neighbours(emb[queries[sl]], emb[members], kk, self_pos[sl], threads)
            top[sl] = members[local]
        row = np.searchsorted(queries, t[in_group, 0])
        hit_p = (top[row] == t[in_group, 1, None]).any(axis=1)
        hit_n = (top[row] == t[in_group, 2, None]).any(axis=1)
        counted[in_group] = hit_p | hit_n
    good = int((counted & correct).sum())
    bad = int((counted & ~correct).sum())
    if return_counts:
        return {"score": good - bad, "counted": int(counted.sum()), "correct": good, "incorrect": bad}
    return good - bad


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
    for sl in _chunks(t.shape[0], n):
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

    Returns ``{"crop_recall@K": ...}`` for each K.
    """
    q = as_matrix(crop_emb, "crop_emb")
    r = as_matrix(ref_emb, "ref_emb")
    src = np.asarray(source_index, dtype=np.int64)
    if src.shape != (q.shape[0],):
        raise ValueError(f"source_index must have shape ({q.shape[0]},), got {src.shape}")
    ks = sorted({int(k) for k in ks})
    if ks[0] < 1 or ks[-1] > r.shape[0]:
        raise ValueError(f"every k must be in [1, {r.shape[0]}], got {ks}")
    found = np.full(q.shape[0], np.iinfo(np.int64).max)
    for sl in _chunks(q.shape[0], ks[-1]):
        _, idx = topk(q[sl], r, ks[-1], threads=threads)
        hit = idx == src[sl, None]
        found[sl] = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, found[sl])
    return {f"crop_recall@{k}": float((found <= k).mean()) for k in ks}
