"""torch.nn modules over deeprank's ops."""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import nn

from .ops import lrn, triplet_loss

__all__ = ["LocalResponseNorm", "TripletRankingLoss"]


class LocalResponseNorm(nn.Module):
    """Drop-in for ``torch.nn.LocalResponseNorm`` backed by deeprank's fused LRN kernel.

    Same constructor arguments, defaults (``k=1.0``, as torch), attributes and repr as torch's module;
    the same values and gradients. The paper's ConvNet uses AlexNet's constants,
    ``LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)``.

    Args:
        size: channels in the normalization window (>= 1).
        alpha: multiplicative factor. beta: exponent. k: additive factor.
    """

    __constants__ = ["size", "alpha", "beta", "k"]

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"size must be an int, got {type(size).__name__}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's argument name
        return lrn(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class TripletRankingLoss(nn.Module):
    """The paper's ranking layer: per-triplet hinge on squared distances, then reduced.

    ``forward(q, p, n)`` takes three ``[B, D]`` tensors; ``forward(stacked)`` takes one ``[3B, D]``
    tensor holding queries, positives and negatives in that order (as one network run on the stacked
    batch produces them). See :func:`deeprank.triplet_loss`.

    Args:
        margin: the gap ``g`` (finite real number).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, margin: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if isinstance(margin, bool) or not isinstance(margin, Real):
            raise TypeError(f"margin must be a real number, got {type(margin).__name__}")
        if not math.isfinite(margin):
            raise ValueError(f"margin must be finite, got {margin}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.margin, self.reduction = float(margin), reduction

    def forward(
        self, q: torch.Tensor, p: torch.Tensor | None = None, n: torch.Tensor | None = None
    ) -> torch.Tensor:
        if p is None and n is None:
            if not isinstance(q, torch.Tensor) or q.dim() != 2 or q.shape[0] % 3 != 0:
                shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
                raise ValueError(f"stacked embeddings must be a [3B, D] tensor, got {shape}")
            b = q.shape[0] // 3
            q, p, n = q[:b], q[b : 2 * b], q[2 * b :]
        elif p is None or n is None:
            raise ValueError("pass either one stacked [3B, D] tensor or all of q, p, n")
        return triplet_loss(q, p, n, self.margin, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"
