"""torch.nn modules over deeprank's ops."""

from __future__ import annotations

import torch
from torch import nn

from ._ops import lrn, triplet_loss


class LocalResponseNorm(nn.Module):
    """Drop-in for ``torch.nn.LocalResponseNorm`` backed by deeprank's LRN kernel."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lrn(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class TripletRankingLoss(nn.Module):
    """The paper's ranking layer: per-triplet hinge on squared distances, then reduced.

    ``forward(q, p, n)`` takes three ``[B, D]`` tensors; ``forward(stacked)`` takes one ``[3B, D]``
    tensor holding queries, positives and negatives in that order (as one network run produces them).
    """

    def __init__(self, margin: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.margin, self.reduction = margin, reduction

    def forward(self, q: torch.Tensor, p: torch.Tensor | None = None, n: torch.Tensor | None = None) -> torch.Tensor:
        if p is None and n is None:
            if q.dim() != 2 or q.shape[0] % 3 != 0:
                raise ValueError(f"stacked embeddings must be [3B, D], got shape {tuple(q.shape)}")
            q, p, n = q.chunk(3, dim=0)
        elif p is None or n is None:
            raise ValueError("pass either one stacked [3B, D] tensor or all of q, p, n")
        return triplet_loss(q, p, n, self.margin, self.reduction)
