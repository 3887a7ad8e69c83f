"""Comparing methods on one labelled collection: every metric per method, and the paper's baselines."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .. import features
from .metrics import (
    as_matrix,
    crop_retrieval,
    retrieval_metrics,
    score_at_top_k,
    similarity_precision,
    triplet_array,
)

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
    """
    emb = as_matrix(embeddings, "embeddings")
    t = triplet_array(triplets, emb.shape[0])
    row: dict[str, float] = {
        "similarity_precision": similarity_precision(emb[t[:, 0]], emb[t[:, 1]], emb[t[:, 2]]),
        f"score@{k}": float(score_at_top_k(emb, t, k=k, threads=threads)),
    }
    metrics = retrieval_metrics(emb, labels, emb, labels, ks=ks, exclude_self=True, threads=threads)
    row.update({key: metrics[key] for key in [f"recall@{kk}" for kk in ks] + ["precision@1", "map@r"]})
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
