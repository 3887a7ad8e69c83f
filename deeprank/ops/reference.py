"""Pure numpy/torch reference implementations of every compiled op.

Tests compare the kernels against these in float64; they are also the fallback where a kernel is
not available. Each op has exactly one reference, here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def topk_reference(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by squared Euclidean distance, computed in float64.

    Distances are formed as ``sum((q - x)^2)`` (not via norms) so they carry no cancellation error.
    Rows are sorted ascending, equal distances by smaller index, NaN last.
    Returns ``(distances float64 [M, k], indices int64 [M, k])``.
    """
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(database, dtype=np.float64)
    m, n = q.shape[0], x.shape[0]
    dist_out = np.empty((m, k), dtype=np.float64)
    idx_out = np.empty((m, k), dtype=np.int64)
    chunk = max(1, (1 << 24) // max(1, n * max(1, q.shape[1])))  # bound the [chunk, N, D] temporary
    for start in range(0, m, chunk):
        qc = q[start : start + chunk]
        d = ((qc[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]  # stable: ties keep index order; NaN last
        idx_out[start : start + chunk] = order
        dist_out[start : start + chunk] = np.take_along_axis(d, order, axis=1)
    return dist_out, idx_out


def triplet_loss_reference(
    q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Per-triplet hinge on squared distances, ``max(0, margin + |q-p|^2 - |q-n|^2)``, then reduced."""
    losses = torch.clamp(margin + ((q - p) ** 2).sum(dim=1) - ((q - n) ** 2).sum(dim=1), min=0)
    # clamp maps NaN to NaN, so NaN inputs are never hidden.
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def lrn_reference(
    x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> torch.Tensor:
    """Across-channel local response normalization, exactly ``torch.nn.functional.local_response_norm``."""
    return F.local_response_norm(x, size, alpha=alpha, beta=beta, k=k)
