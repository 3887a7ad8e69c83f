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

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .search import topk

# Entries of a [chunk, k] neighbour block (or [chunk, N] distance block) held at once; also bounds
# the top-K kernel's candidate buffers, which grow with chunk * k.
_BLOCK_ELEMENTS = 1 << 20


def _as_matrix(x: Any, name: str) -> np.ndarray:
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
    q = _as_matrix(query_emb, "query_emb")
    r = _as_matrix(ref_emb, "ref_emb")
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
    qa, pa, na = _as_matrix(q, "q"), _as_matrix(p, "p"), _as_matrix(n, "n")
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


def _triplet_array(triplets: Any, n: int) -> np.ndarray:
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
    emb = _as_matrix(embeddings, "embeddings")
    n = emb.shape[0]
    t = _triplet_array(triplets, n)
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
    emb = _as_matrix(embeddings, "embeddings")
    n = emb.shape[0]
    t = _triplet_array(triplets, n)
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


def _draw_partners(codes: np.ndarray, queries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each query a uniform positive of its class (not itself) and a uniform negative of another class."""
    sizes = np.bincount(codes)
    order = np.argsort(codes, kind="stable")  # items grouped by class
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.empty(codes.size, dtype=np.int64)
    position[order] = np.arange(codes.size)
    c = codes[queries]
    size, start = sizes[c], starts[c]
    own = position[queries] - start
    r = (rng.random(queries.size) * (size - 1)).astype(np.int64)
    pos = order[start + r + (r >= own)]  # skip the query's own slot in its class block
    r = (rng.random(queries.size) * (codes.size - size)).astype(np.int64)
    neg = order[np.where(r < start, r, r + size)]  # skip the query's class block
    return np.stack([queries, pos, neg], axis=1)


def _class_codes(labels: Any) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.size < 3:
        raise ValueError(f"labels must be 1-D with at least 3 items, got shape {lab.shape}")
    classes, codes = np.unique(lab, return_inverse=True)
    if classes.size < 2:
        raise ValueError("sampling triplets needs at least two classes")
    codes = codes.reshape(-1)
    if not (np.bincount(codes) >= 2).any():
        raise ValueError("no class has two images: cannot draw a positive")
    return codes


def sample_labelled_triplets(labels: Any, count: int, seed: int = 0) -> np.ndarray:
    """Random triplets from class labels: positive of the query's class, negative of another class.

    Queries are uniform over the items whose class has a second item. Returns int64 ``[count, 3]`` of
    indices ``(query, positive, negative)`` with positive != query.
    """
    codes = _class_codes(labels)
    eligible = np.flatnonzero(np.bincount(codes)[codes] >= 2)
    rng = np.random.default_rng(seed)
    return _draw_partners(codes, rng.choice(eligible, size=count), rng)


def triplets_for_each_query(labels: Any, per_image: int = 1, seed: int = 0) -> np.ndarray:
    """Like :func:`sample_labelled_triplets`, but every item (whose class has a second item) is the query
    of exactly ``per_image`` triplets, in item order."""
    codes = _class_codes(labels)
    queries = np.repeat(np.flatnonzero(np.bincount(codes)[codes] >= 2), per_image)
    return _draw_partners(codes, queries, np.random.default_rng(seed))


# ----------------------------------------------------------------------------------------- crops


def random_crops(
    images: torch.Tensor, scale: tuple[float, float] = (0.35, 0.65), seed: int = 0
) -> torch.Tensor:
    """A random axis-aligned crop of each image (area share in ``scale``), resized back to full size.

    These are the applied report's "crops as queries": each crop should retrieve its source image.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
    gen = torch.Generator().manual_seed(seed)
    num = images.shape[0]
    side = torch.sqrt(lo + (hi - lo) * torch.rand(num, generator=gen, dtype=torch.float64)).float()
    shift = (1 - side)[:, None] * (2 * torch.rand(num, 2, generator=gen) - 1)
    theta = torch.zeros(num, 2, 3)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


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
    q = _as_matrix(crop_emb, "crop_emb")
    r = _as_matrix(ref_emb, "ref_emb")
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


# ------------------------------------------------------------------------------- method tables

Embedder = Callable[[torch.Tensor], np.ndarray]


def evaluate_embeddings(
    embeddings: Any,
    labels: Any,
    triplets: Any,
    *,
    k: int = 30,
    ks: Sequence[int] = (1, 10),
    crop_embeddings: Any = None,
    crop_sources: Any = None,
    threads: int | None = None,
) -> dict[str, float]:
    """Every metric for one method on one labelled collection (the collection is its own query set).

    Returns similarity precision and score-at-top-K on ``triplets`` (candidates: the whole
    collection), recall@K / precision@1 / MAP@R with the collection as queries and references
    (``exclude_self``), and crop-to-source recall when crop embeddings are given.
    """
    emb = _as_matrix(embeddings, "embeddings")
    t = _triplet_array(triplets, emb.shape[0])
    row: dict[str, float] = {
        "similarity_precision": similarity_precision(emb[t[:, 0]], emb[t[:, 1]], emb[t[:, 2]]),
        f"score@{k}": float(score_at_top_k(emb, t, k=k, threads=threads)),
    }
    metrics = retrieval_metrics(emb, labels, emb, labels, ks=ks, exclude_self=True, threads=threads)
    row.update({key: metrics[key] for key in [f"recall@{kk}" for kk in ks] + ["precision@1", "map@r"]})
    if crop_embeddings is not None:
        row.update(crop_retrieval(crop_embeddings, crop_sources, emb, ks=ks, threads=threads))
    return row


_RATIO_PREFIXES = ("similarity_precision", "recall@", "precision@", "map@", "crop_recall@")


def _format_cell(key: str, value: Any) -> str:
    if isinstance(value, float) and key.startswith("score@"):
        return f"{value:.0f}"
    if isinstance(value, float) and key.startswith(_RATIO_PREFIXES):
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def results_markdown(rows: Sequence[dict[str, Any]], title: str | None = None) -> str:
    """A markdown table of method rows (``{"method": name, metric: value, ...}``)."""
    if not rows:
        raise ValueError("no result rows to format")
    keys = [key for key in rows[0] if key != "method"]
    lines = [f"## {title}", ""] if title else []
    lines.append("| method | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for r in rows:
        lines.append(
            f"| {r['method']} | " + " | ".join(_format_cell(key, r.get(key, "")) for key in keys) + " |"
        )
    return "\n".join(lines) + "\n"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary file and ``os.replace`` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(
    rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, info: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``results.json`` (rows plus ``info``) and ``results.md`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    payload = {"info": info or {}, "results": list(rows)}
    json_path, md_path = out / "results.json", out / "results.md"
    write_text_atomic(json_path, json.dumps(payload, indent=2, default=str) + "\n")
    header = ""
    if info:
        header = "".join(f"- {key}: {value}\n" for key, value in info.items()) + "\n"
    write_text_atomic(md_path, "# deeprank evaluation\n\n" + header + results_markdown(rows))
    return json_path, md_path


def evaluate_methods(
    methods: dict[str, tuple[Any, Any]],
    labels: Any,
    triplets: Any,
    *,
    k: int = 30,
    ks: Sequence[int] = (1, 10),
    crop_sources: Any = None,
    extra: dict[str, dict[str, Any]] | None = None,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """One table row per method from precomputed embeddings.

    ``methods`` maps a name to ``(embeddings [N, d], crop_embeddings [M, d] or None)``; every method is
    measured on the same ``labels``, ``triplets`` and crops (:func:`evaluate_embeddings`). ``extra``
    adds columns per method (e.g. embedding time).
    """
    rows = []
    for name, (emb, crop_emb) in methods.items():
        emb = _as_matrix(emb, f"embeddings of {name}")
        row: dict[str, Any] = {"method": name, "dim": emb.shape[1]}
        row.update(
            evaluate_embeddings(
                emb,
                labels,
                triplets,
                k=k,
                ks=ks,
                crop_embeddings=crop_emb,
                crop_sources=crop_sources if crop_emb is not None else None,
                threads=threads,
            )
        )
        row.update((extra or {}).get(name, {}))
        rows.append(row)
    return rows


def baseline_embedders() -> dict[str, Embedder]:
    """The paper's hand-crafted baselines as embedders of ``[N, C, H, W]`` image tensors in ``[0, 1]``.

    Raw pixels (flattened), colour histogram, HOG and Haar wavelet (``deeprank.features``).
    """
    from . import features

    def raw_pixels(x: torch.Tensor) -> np.ndarray:
        return x.reshape(x.shape[0], -1).float().numpy()

    def wrap(fn: Callable[..., Any]) -> Embedder:
        def run(x: torch.Tensor) -> np.ndarray:
            out = fn(x)
            out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
            return out.reshape(out.shape[0], -1).astype(np.float32)

        return run

    return {
        "raw pixels": raw_pixels,
        "colour histogram": wrap(features.color_histogram),
        "HOG": wrap(features.hog),
        "wavelet": wrap(features.wavelet),
    }


def labelled_folder(folder: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """Images under ``folder`` with their category: the first sub-folder below ``folder``."""
    from .embed import list_folder

    root = Path(folder)
    files = list_folder(root)
    labels = [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else "" for f in files]
    if len(set(labels)) < 2:
        from .errors import DeeprankError

        raise DeeprankError(f"{root} needs at least two category sub-folders of images")
    return files, labels


def write_folder_triplets(
    folder: str | os.PathLike, output: str | os.PathLike, *, per_image: int = 1, seed: int = 0
) -> int:
    """Write a ``query,positive,negative`` CSV sampled from a labelled folder.

    Paths are relative to the CSV's own folder (as :func:`deeprank.data.read_triplet_csv` resolves them).

    Each image is the query of ``per_image`` triplets; the positive comes from its category folder
    (not itself), the negative from another. Returns the number of triplets written.
    """
    import csv
    import io

    root = Path(folder)
    files, labels = labelled_folder(root)
    lab = np.asarray(labels)
    t = triplets_for_each_query(lab, per_image, seed)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["query", "positive", "negative"])
    base = Path(output).resolve().parent
    rel = [Path(os.path.relpath(f.resolve(), base)).as_posix() for f in files]
    for q, p, n in t.tolist():
        writer.writerow([rel[q], rel[p], rel[n]])
    write_text_atomic(output, buf.getvalue())
    return int(t.shape[0])


def evaluate_folder(
    model: Any,
    folder: str | os.PathLike,
    output: str | os.PathLike,
    *,
    triplets_csv: str | os.PathLike | None = None,
    k: int = 30,
    num_triplets: int = 2000,
    baselines: bool = False,
    crops: int = 500,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Evaluate a model (checkpoint directory or model) on a labelled folder; write the table and heat-map.

    Labels are the first sub-folder of each image. Triplets come from ``triplets_csv`` (paths inside
    ``folder``) or are sampled (positive same category, negative another). With ``baselines`` the
    hand-crafted features and the untrained network are measured on the same data. Images are held in
    memory as tensors (fine for tens of thousands of small images). Returns the files written.
    """
    from .data import read_triplet_csv
    from .embed import embed_tensor, load_images
    from .errors import DeeprankError
    from .index import _resolve_model
    from .plots import rank_heatmap

    net, _ = _resolve_model(model)
    files, labels = labelled_folder(folder)
    from .embed import Progress

    bar = Progress(len(files), "loading", progress)
    parts, kept, skipped = [], [], []
    for start in range(0, len(files), 1024):
        batch, ok, bad = load_images(files[start : start + 1024], net.image_size, net.in_channels)
        parts.append(batch)
        kept.extend(start + i for i in ok)
        skipped.extend(bad)
        bar.update(min(1024, len(files) - start))
    images = torch.cat(parts)
    files = [files[i] for i in kept]
    lab = np.asarray([labels[i] for i in kept])
    if triplets_csv is not None:
        where = {f.resolve(): i for i, f in enumerate(files)}
        rows = []
        for q, p, n in read_triplet_csv(triplets_csv):
            try:
                rows.append([where[Path(q).resolve()], where[Path(p).resolve()], where[Path(n).resolve()]])
            except KeyError as exc:
                raise DeeprankError(
                    f"triplet image {exc.args[0]} is not a readable image of {folder}"
                ) from None
        triplets = np.asarray(rows, dtype=np.int64)
    else:
        triplets = sample_labelled_triplets(lab, num_triplets, seed=seed)
    rng = np.random.default_rng(seed)
    crop_sources = rng.choice(len(files), size=min(crops, len(files)), replace=False) if crops > 0 else None
    crop_images = random_crops(images[crop_sources], seed=seed) if crop_sources is not None else None

    embedders: dict[str, Embedder] = {}
    if baselines:
        from .models import build_model

        embedders.update(baseline_embedders())
        torch.manual_seed(seed)
        untrained = build_model(dict(net.config))
        embedders["untrained network"] = lambda x: embed_tensor(untrained, x)
    embedders["model"] = lambda x: embed_tensor(net, x)
    methods = {
        name: (fn(images), None if crop_images is None else fn(crop_images)) for name, fn in embedders.items()
    }
    table = evaluate_methods(methods, lab, triplets, k=k, ks=(1, 10), crop_sources=crop_sources)
    out = Path(output)
    info = {
        "folder": str(Path(folder).resolve()),
        "images": len(files),
        "skipped": len(skipped),
        "triplets": f"{len(triplets)} " + ("from " + str(triplets_csv) if triplets_csv else "sampled"),
    }
    written = list(write_results(table, out, info))
    rp, rn = triplet_ranks(methods["model"][0], triplets)
    written.append(rank_heatmap(rp, rn, out / "heatmap.png"))
    return written
