"""The paper's ranking loss as torch ops: ``deeprank::triplet_forward`` and ``triplet_backward``.

- ``triplet_forward(q, p, n, margin) -> losses[B]``: per-triplet hinge, unreduced.
- ``triplet_backward(grad_losses, q, p, n, margin) -> (dq, dp, dn)``.

Registered with ``torch.library.custom_op`` so they compose with autograd, ``torch.compile`` and fake
tensors. CPU kernels are in ``deeprank._C`` (float32 and float64); CUDA kernels are reached through
:mod:`deeprank.ops.cuda`. :func:`triplet_loss` checks its arguments once, here, and raises
``TypeError``/``ValueError`` naming the argument. The triplet loss supports double backward (its
backward is piecewise linear, written in torch ops). The reference is
:func:`deeprank.ops.reference.triplet_loss_reference`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _C
from . import cuda
from ._cpu import OUTPUTS, host
from .checks import check_float_tensor, check_real, require_cpu, require_same_device

__all__ = ["triplet_loss"]

_REDUCTIONS = ("mean", "sum", "none")


@torch.library.custom_op("deeprank::triplet_forward", mutates_args=(), device_types="cpu")
def _triplet_forward(q: Tensor, p: Tensor, n: Tensor, margin: float) -> Tensor:
    require_cpu("triplet_forward", q=q, p=p, n=n)
    q, p, n = q.contiguous(), p.contiguous(), n.contiguous()
    losses = OUTPUTS.empty((q.shape[0],), q.dtype)
    _C.triplet_forward(host(q), host(p), host(n), margin, host(losses))
    return losses


@_triplet_forward.register_kernel("cuda")
def _triplet_forward_cuda(q: Tensor, p: Tensor, n: Tensor, margin: float) -> Tensor:
    return cuda.triplet_forward(q.contiguous(), p.contiguous(), n.contiguous(), margin)


@_triplet_forward.register_fake
def _triplet_forward_fake(q: Tensor, p: Tensor, n: Tensor, margin: float) -> Tensor:
    return q.new_empty(q.shape[0])


@torch.library.custom_op("deeprank::triplet_backward", mutates_args=(), device_types="cpu")
def _triplet_backward(
    grad_losses: Tensor, q: Tensor, p: Tensor, n: Tensor, margin: float
) -> tuple[Tensor, Tensor, Tensor]:
    require_cpu("triplet_backward", grad_losses=grad_losses, q=q, p=p, n=n)
    grad_losses = grad_losses.contiguous()  # the gradient of a mean arrives expanded (stride 0)
    q, p, n = q.contiguous(), p.contiguous(), n.contiguous()
    dq, dp, dn = (OUTPUTS.empty(q.shape, q.dtype) for _ in range(3))
    _C.triplet_backward(host(grad_losses), host(q), host(p), host(n), margin, host(dq), host(dp), host(dn))
    return dq, dp, dn


@_triplet_backward.register_kernel("cuda")
def _triplet_backward_cuda(
    grad_losses: Tensor, q: Tensor, p: Tensor, n: Tensor, margin: float
) -> tuple[Tensor, Tensor, Tensor]:
    return cuda.triplet_backward(
        grad_losses.contiguous(), q.contiguous(), p.contiguous(), n.contiguous(), margin
    )


@_triplet_backward.register_fake
def _triplet_backward_fake(
    grad_losses: Tensor, q: Tensor, p: Tensor, n: Tensor, margin: float
) -> tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _triplet_setup_context(ctx, inputs, output) -> None:
    q, p, n, margin = inputs
    ctx.save_for_backward(q, p, n)
    ctx.margin = margin


def _triplet_forward_grad(ctx, grad_losses: Tensor):
    q, p, n = ctx.saved_tensors
    dq, dp, dn = torch.ops.deeprank.triplet_backward(grad_losses, q, p, n, ctx.margin)
    return dq, dp, dn, None


_triplet_forward.register_autograd(_triplet_forward_grad, setup_context=_triplet_setup_context)


def _triplet_backward_setup_context(ctx, inputs, output) -> None:
    grad_losses, q, p, n, margin = inputs
    ctx.save_for_backward(grad_losses, q, p, n)
    ctx.margin = margin


def _triplet_backward_grad(ctx, gdq: Tensor | None, gdp: Tensor | None, gdn: Tensor | None):
    # The backward is dq = c g (n - p), dp = c g (p - q), dn = c g (q - n) with c = 2 where the hinge
    # is active, 0 where satisfied, NaN where the hinge is NaN: piecewise linear, so its own gradient
    # is a few torch ops (which keeps higher derivatives available too).
    grad_losses, q, p, n = ctx.saved_tensors
    zeros = torch.zeros_like(q)
    gdq = zeros if gdq is None else gdq
    gdp = zeros if gdp is None else gdp
    gdn = zeros if gdn is None else gdn
    losses = torch.ops.deeprank.triplet_forward(q.detach(), p.detach(), n.detach(), ctx.margin)
    c = torch.where(losses > 0, 2.0, 0.0).to(q.dtype)
    c = torch.where(torch.isnan(losses), torch.nan, c).unsqueeze(1)
    cg = c * grad_losses.unsqueeze(1)
    d_grad = (c * (gdq * (n - p) + gdp * (p - q) + gdn * (q - n))).sum(dim=1)
    return d_grad, cg * (gdn - gdp), cg * (gdp - gdq), cg * (gdq - gdn), None


_triplet_backward.register_autograd(_triplet_backward_grad, setup_context=_triplet_backward_setup_context)


def triplet_loss(q: Tensor, p: Tensor, n: Tensor, margin: float = 1.0, reduction: str = "mean") -> Tensor:
    """The paper's ranking loss: per-triplet hinge on squared Euclidean distances, then reduced.

    ``l_i = max(0, margin + |q_i - p_i|^2 - |q_i - n_i|^2)``; ``reduction`` is ``"mean"``, ``"sum"``
    or ``"none"`` (the ``[B]`` vector of ``l_i``).

    Args:
        q, p, n: queries, positives and negatives, ``[B, D]`` float32 or float64 tensors of one
            dtype on one device (CPU, or CUDA when deeprank was built with CUDA).
        margin: the gap ``g`` demanded between the two distances (finite).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Gradients flow to all three inputs; satisfied triplets (``l_i = 0``) contribute exactly zero,
    and a NaN anywhere in a triplet gives NaN loss and NaN gradients for it.

    Raises:
        TypeError: a non-tensor, a dtype other than float32/float64, or mixed dtypes.
        ValueError: not 2-D, shapes that differ, tensors on different devices, a non-finite margin
            or an unknown reduction.
    """
    for name, t in (("q", q), ("p", p), ("n", n)):
        check_float_tensor(name, t)
        if t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D [B, D] tensor, got {t.dim()}-D shape {tuple(t.shape)}")
    if not (q.shape == p.shape == n.shape):
        raise ValueError(
            "q, p and n must have the same [B, D] shape, got "
            f"{tuple(q.shape)}, {tuple(p.shape)}, {tuple(n.shape)}"
        )
    if not (q.dtype == p.dtype == n.dtype):
        raise TypeError(f"q, p and n must have one dtype, got {q.dtype}, {p.dtype}, {n.dtype}")
    require_same_device("triplet_loss", q=q, p=p, n=n)
    margin = check_real("margin", margin)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    losses = torch.ops.deeprank.triplet_forward(q.contiguous(), p.contiguous(), n.contiguous(), margin)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses
