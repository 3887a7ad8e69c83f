"""torch ops for the triplet ranking loss and local response normalization.

Four operators live in the ``deeprank`` namespace (``torch.ops.deeprank.*``), registered with
``torch.library.custom_op`` so they compose with autograd, ``torch.compile`` and fake tensors:

- ``triplet_forward(q, p, n, margin) -> losses[B]``: per-triplet hinge, unreduced.
- ``triplet_backward(grad_losses, q, p, n, margin) -> (dq, dp, dn)``.
- ``lrn_forward(x, size, alpha, beta, k) -> y``.
- ``lrn_backward(grad_y, x, size, alpha, beta, k) -> grad_x`` (recomputes the window sums from x).

CPU kernels are in ``deeprank._C`` (float32 and float64); CUDA kernels are reached through
``deeprank._cuda_ops``. The public functions :func:`triplet_loss` and :func:`lrn` check their
arguments once, here, and raise ``TypeError``/``ValueError`` naming the argument.

Double backward: the triplet loss supports it (its backward is piecewise linear, written in torch
ops); LRN does not and raises a ``RuntimeError`` saying so when a second derivative is taken.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from numbers import Real

import numpy as np
import torch
from torch import Tensor

from . import _C, _cuda_ops

__all__ = ["lrn", "triplet_loss"]

_FLOAT_DTYPES = (torch.float32, torch.float64)
_REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------------------------------
# Helpers shared by the kernels
# ---------------------------------------------------------------------------------------------------


def _host(t: Tensor) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor (no copy; the kernels read or write it in place)."""
    return t.detach().numpy()


class _OutputBuffers:
    """Reuses the memory of large CPU kernel outputs once every tensor on it is gone.

    torch's CPU allocator hands big blocks back to the operating system when they are freed, so each
    fresh output of hundreds of MB is paid for again in page faults; on the 2-core VMs this project
    measures on, that costs about 45 ms per 64 MB, more than the kernels' own work. Buffers here are
    numpy arrays given out through ``torch.from_numpy`` (ordinary tensors); a buffer is reused only
    when the numpy view its tensor holds has died, i.e. no tensor or view of it is left anywhere.

    At most ``DEEPRANK_OUTPUT_CACHE_MB`` (default 256; 0 turns reuse off) are kept; outputs under
    1 MiB are left to torch.
    """

    min_bytes = 1 << 20

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._buffers: list[tuple[np.ndarray, list]] = []  # (array, [weakref to the view in use or None])
        self._bytes = 0

    def empty(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> Tensor:
        np_dtype = np.dtype(np.float32) if dtype == torch.float32 else np.dtype(np.float64)
        count = math.prod(shape)
        nbytes = count * np_dtype.itemsize
        if nbytes < self.min_bytes or self.max_bytes <= 0:
            return torch.empty(shape, dtype=dtype)
        with self._lock:
            array, slot = self._take(nbytes, np_dtype)
            if array is None:
                array, slot = np.empty(count, dtype=np_dtype), [None]
                if self._bytes + nbytes <= self.max_bytes:
                    self._buffers.append((array, slot))
                    self._bytes += nbytes
            view = array[:]  # the tensor holds this view; its death frees the buffer
            slot[0] = weakref.ref(view)
        return torch.from_numpy(view).view(shape)

    def _take(self, nbytes: int, np_dtype: np.dtype) -> tuple[np.ndarray | None, list | None]:
        for array, slot in self._buffers:
            if array.nbytes == nbytes and array.dtype == np_dtype and (slot[0] is None or slot[0]() is None):
                return array, slot
        return None, None


_OUTPUTS = _OutputBuffers(int(os.environ.get("DEEPRANK_OUTPUT_CACHE_MB", "256")) << 20)


def _require_cpu(op: str, **tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t.device.type != "cpu":
            raise ValueError(f"deeprank::{op}: {name} is on {t.device}, expected all tensors on cpu")


def _require_same_device(op: str, **tensors: Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {listed}")


def _as_ncs(t: Tensor) -> Tensor:
    """[N, C, *] viewed as [N, C, S] (S = product of the trailing sizes; a contiguous tensor)."""
    if t.dim() < 3:
        raise ValueError(
            f"lrn input must be [N, C, *] with at least 3 dimensions, got shape {tuple(t.shape)}"
        )
    return t.view(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


# ---------------------------------------------------------------------------------------------------
# deeprank::triplet_forward / triplet_backward
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op("deeprank::triplet_forward", mutates_args=(), device_types="cpu")
def _triplet_forward(q: Tensor, p: Tensor, n: Tensor, margin: float) -> Tensor:
    _require_cpu("triplet_forward", q=q, p=p, n=n)
    q, p, n = q.contiguous(), p.contiguous(), n.contiguous()
    losses = _OUTPUTS.empty((q.shape[0],), q.dtype)
    _C.triplet_forward(_host(q), _host(p), _host(n), margin, _host(losses))
    return losses


@_triplet_forward.register_kernel("cuda")
def _triplet_forward_cuda(q: Tensor, p: Tensor, n: Tensor, margin: float) -> Tensor:
    return _cuda_ops.triplet_forward(q.contiguous(), p.contiguous(), n.contiguous(), margin)


@_triplet_forward.register_fake
def _triplet_forward_fake(q: Tensor, p: Tensor, n: Tensor, margin: float) -> Tensor:
    return q.new_empty(q.shape[0])


@torch.library.custom_op("deeprank::triplet_backward", mutates_args=(), device_types="cpu")
def _triplet_backward(
    grad_losses: Tensor, q: Tensor, p: Tensor, n: Tensor, margin: float
) -> tuple[Tensor, Tensor, Tensor]:
    _require_cpu("triplet_backward", grad_losses=grad_losses, q=q, p=p, n=n)
    grad_losses = grad_losses.contiguous()  # the gradient of a mean arrives expanded (stride 0)
    q, p, n = q.contiguous(), p.contiguous(), n.contiguous()
    dq, dp, dn = (_OUTPUTS.empty(q.shape, q.dtype) for _ in range(3))
    _C.triplet_backward(
        _host(grad_losses), _host(q), _host(p), _host(n), margin, _host(dq), _host(dp), _host(dn)
    )
    return dq, dp, dn


@_triplet_backward.register_kernel("cuda")
def _triplet_backward_cuda(
    grad_losses: Tensor, q: Tensor, p: Tensor, n: Tensor, margin: float
) -> tuple[Tensor, Tensor, Tensor]:
    return _cuda_ops.triplet_backward(
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


# ---------------------------------------------------------------------------------------------------
# deeprank::lrn_forward / lrn_backward
# ---------------------------------------------------------------------------------------------------


def _is_channels_last(x: Tensor) -> bool:
    """A 4-D tensor laid out NHWC (and not also plain contiguous, as when H = W = 1 or C = 1)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _as_nsc(t: Tensor) -> Tensor:
    """A channels-last [N, C, H, W] tensor viewed as its memory order [N, H*W, C] (no copy)."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).view(n, h * w, c)


def _lrn_output(x: Tensor) -> Tensor:
    """The output of the CPU LRN ops for input x: channels-last for channels-last x, else contiguous."""
    if _is_channels_last(x):
        n, c, h, w = x.shape
        return _OUTPUTS.empty((n, h, w, c), x.dtype).permute(0, 3, 1, 2)
    return _OUTPUTS.empty(x.shape, x.dtype)


def _lrn_call(kernel, *tensors: Tensor, params: tuple) -> Tensor:
    """Run a CPU LRN kernel: channels-last x in its own layout (NHWC), anything else as NCHW."""
    x = tensors[-1]
    if _is_channels_last(x):
        tensors = tuple(t.contiguous(memory_format=torch.channels_last) for t in tensors)
        out = _lrn_output(x)
        kernel(*(_host(_as_nsc(t)) for t in tensors), *params, _host(_as_nsc(out)), True)
        return out
    views = [_as_ncs(t.contiguous()) for t in tensors]  # raises for fewer than 3 dimensions
    out = _lrn_output(x)
    kernel(*(_host(v) for v in views), *params, _host(_as_ncs(out)))
    return out


@torch.library.custom_op("deeprank::lrn_forward", mutates_args=(), device_types="cpu")
def _lrn_forward(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    _require_cpu("lrn_forward", x=x)
    return _lrn_call(_C.lrn_forward, x, params=(size, alpha, beta, k))


@_lrn_forward.register_kernel("cuda")
def _lrn_forward_cuda(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    return _cuda_ops.lrn_forward(x.contiguous(), size, alpha, beta, k)


@_lrn_forward.register_fake
def _lrn_forward_fake(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    if x.device.type == "cpu" and _is_channels_last(x):
        return torch.empty_like(x, memory_format=torch.channels_last)
    return x.new_empty(x.shape)


@torch.library.custom_op("deeprank::lrn_backward", mutates_args=(), device_types="cpu")
def _lrn_backward(grad_y: Tensor, x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    _require_cpu("lrn_backward", grad_y=grad_y, x=x)
    return _lrn_call(_C.lrn_backward, grad_y, x, params=(size, alpha, beta, k))


@_lrn_backward.register_kernel("cuda")
def _lrn_backward_cuda(grad_y: Tensor, x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    return _cuda_ops.lrn_backward(grad_y.contiguous(), x.contiguous(), size, alpha, beta, k)


@_lrn_backward.register_fake
def _lrn_backward_fake(grad_y: Tensor, x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    return _lrn_forward_fake(x, size, alpha, beta, k)


def _lrn_setup_context(ctx, inputs, output) -> None:
    x, size, alpha, beta, k = inputs
    ctx.save_for_backward(x)
    ctx.params = (size, alpha, beta, k)


def _lrn_forward_grad(ctx, grad_y: Tensor):
    (x,) = ctx.saved_tensors
    return torch.ops.deeprank.lrn_backward(grad_y, x, *ctx.params), None, None, None, None


_lrn_forward.register_autograd(_lrn_forward_grad, setup_context=_lrn_setup_context)


def _lrn_backward_setup_context(ctx, inputs, output) -> None:
    pass


def _lrn_backward_grad(ctx, grad_grad_x: Tensor):
    raise RuntimeError(
        "deeprank.lrn does not support double backward (a gradient of its gradient); "
        "use torch.nn.functional.local_response_norm where second derivatives are needed"
    )


_lrn_backward.register_autograd(_lrn_backward_grad, setup_context=_lrn_backward_setup_context)


# ---------------------------------------------------------------------------------------------------
# Public functions: argument checks, then the ops
# ---------------------------------------------------------------------------------------------------


def _check_real(name: str, value: object, *, finite: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_float_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    return t


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
        _check_float_tensor(name, t)
        if t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D [B, D] tensor, got {t.dim()}-D shape {tuple(t.shape)}")
    if not (q.shape == p.shape == n.shape):
        raise ValueError(
            "q, p and n must have the same [B, D] shape, got "
            f"{tuple(q.shape)}, {tuple(p.shape)}, {tuple(n.shape)}"
        )
    if not (q.dtype == p.dtype == n.dtype):
        raise TypeError(f"q, p and n must have one dtype, got {q.dtype}, {p.dtype}, {n.dtype}")
    _require_same_device("triplet_loss", q=q, p=p, n=n)
    margin = _check_real("margin", margin)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    losses = torch.ops.deeprank.triplet_forward(q.contiguous(), p.contiguous(), n.contiguous(), margin)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def lrn(x: Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> Tensor:
    """Across-channel local response normalization (the AlexNet form), as in the paper's ConvNet.

    ``y[c] = x[c] * (k + alpha/size * sum_{j in window(c)} x[j]^2)^-beta`` with the window of ``size``
    channels placed exactly as ``torch.nn.functional.local_response_norm`` places it (``size//2``
    before, ``(size-1)//2`` after, zeros beyond the edges). Values and gradients match that function.

    Args:
        x: ``[N, C, H, W]`` or ``[N, C, L]`` (any ``[N, C, *]``) float32 or float64 tensor. A
            channels-last ``[N, C, H, W]`` CPU tensor is normalised in its own layout (no copies)
            and gives a channels-last result.
        size: channels in the window (>= 1; may exceed C).
        alpha, beta, k: the usual constants; the defaults are AlexNet's (and the paper's).

    Raises:
        TypeError: a non-tensor, a dtype other than float32/float64, or a non-integer size.
        ValueError: fewer than 3 dimensions, size < 1, or non-finite alpha, beta or k.
    """
    _check_float_tensor("x", x)
    if x.dim() < 3:
        raise ValueError(f"x must be [N, C, H, W] or [N, C, L] (at least 3-D), got shape {tuple(x.shape)}")
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    alpha, beta, k = _check_real("alpha", alpha), _check_real("beta", beta), _check_real("k", k)
    # Channels-last CPU tensors run in their own layout (output channels-last too); anything else is
    # made contiguous once here, so the backward does not copy the saved input again.
    if not (x.device.type == "cpu" and _is_channels_last(x)):
        x = x.contiguous()
    return torch.ops.deeprank.lrn_forward(x, size, alpha, beta, k)
