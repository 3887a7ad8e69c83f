"""torch ops (placeholder until the kernels land: pure-torch references with torch autograd)."""

from __future__ import annotations

import torch

from ._reference import lrn_reference, triplet_loss_reference


def triplet_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 1.0,
                 reduction: str = "mean") -> torch.Tensor:
    """Per-triplet hinge ``max(0, margin + |q-p|^2 - |q-n|^2)`` reduced by ``reduction``."""
    return triplet_loss_reference(q, p, n, margin, reduction)


def lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> torch.Tensor:
    """Across-channel local response normalization (AlexNet form)."""
    return lrn_reference(x, size, alpha, beta, k)
