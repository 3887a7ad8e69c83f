"""Comparing methods on one labelled collection: every metric per method, and the paper's baselines."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .. import features
from ..ops.checks import check_k
from .accumulators import RetrievalAccumulator, TopKTripletAccumulator, feed
from .metrics import as_matrix, crop_retrieval, share_correct, triplet_array, triplets_correct
from .neighbours import neighbour_blocks

__all__ = ["Embedder", "baseline_embedders", "evaluate_embeddings", "evaluate_methods"]


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

    Work is shared: the triplets' distances are computed once for both triplet metrics, and one
    neighbour search of the collection (its rows of the retrieval queries and the triplet queries, up to
    the largest cut-off) feeds score-at-top-K and every retrieval metric; only the crops, a different
    query set, have their own search.
    """
    emb = as_matrix(embeddings, "embeddings")
    n = emb.shape[0]
    t = triplet_array(triplets, n)
    k = check_k(k, n, "the number of embeddings")
    correct = triplets_correct(emb, t)
    retrieval = RetrievalAccumulator(labels, labels, n, n, ks, exclude_self=True, map_at_r=True)
    score = TopKTripletAccumulator(t, correct, k)
    width = max(retrieval.k, min(k, n - 1))  # the query itself is no candidate: at most n - 1
    rows = np.union1d(retrieval.rows, score.rows)
    feed(neighbour_blocks(emb, emb, width, exclude_self=True, rows=rows, threads=threads), retrieval, score)
    metrics = retrieval.result()
    row: dict[str, float] = {
        "similarity_precision": share_correct(correct),
        f"score@{k}": float(score.result()["score"]),
    }
    named = ["precision_at_1", "r_precision", "mean_average_precision_at_r", "mean_reciprocal_rank"]
    row.update({key: metrics[key] for key in [f"recall@{kk}" for kk in ks] + named})
    if crop_embeddings is not None:
        row.update(crop_retrieval(crop_embeddings, crop_sources, emb, ks=ks, threads=threads))
    return row


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
        emb = as_matrix(emb, f"embeddings of {name}")
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

    def raw_pixels(x: torch.Tensor) -> np.ndarray:
        pixels = x.reshape(x.shape[0], -1).float()
        return (pixels / 255.0 if x.dtype == torch.uint8 else pixels).numpy()

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
