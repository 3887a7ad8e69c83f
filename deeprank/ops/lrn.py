"""Local response normalization as torch ops: ``deeprank::lrn_forward`` and ``lrn_backward``.

- ``lrn_forward(x, size, alpha, beta, k) -> y``.
- ``lrn_backward(grad_y, x, size, alpha, beta, k) -> grad_x`` (recomputes the window sums from x).

Registered with ``torch.library.custom_op`` (autograd, ``torch.compile``, fake tensors). CPU kernels are
in ``deeprank._C`` (float32 and float64, NCHW or channels-last); CUDA kernels are reached through
:mod:`deeprank.ops.cuda`. Double backward is not supported and raises a ``RuntimeError`` saying so.
The reference is :func:`deeprank.ops.reference.lrn_reference`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _C
from . import cuda
from ._cpu import OUTPUTS, host
from .checks import check_float_tensor, check_real, require_cpu

__all__ = ["lrn"]


def _as_ncs(t: Tensor) -> Tensor:
    """[N, C, *] viewed as [N, C, S] (S = product of the trailing sizes; a contiguous tensor)."""
    if t.dim() < 3:
        raise ValueError(
            f"lrn input must be [N, C, *] with at least 3 dimensions, got shape {tuple(t.shape)}"
        )
    return t.view(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


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
        return OUTPUTS.empty((n, h, w, c), x.dtype).permute(0, 3, 1, 2)
    return OUTPUTS.empty(x.shape, x.dtype)


def _lrn_call(kernel, *tensors: Tensor, params: tuple) -> Tensor:
    """Run a CPU LRN kernel: channels-last x in its own layout (NHWC), anything else as NCHW."""
    x = tensors[-1]
    if _is_channels_last(x):
        tensors = tuple(t.contiguous(memory_format=torch.channels_last) for t in tensors)
        out = _lrn_output(x)
        kernel(*(host(_as_nsc(t)) for t in tensors), *params, host(_as_nsc(out)), True)
        return out
    views = [_as_ncs(t.contiguous()) for t in tensors]  # raises for fewer than 3 dimensions
    out = _lrn_output(x)
    kernel(*(host(v) for v in views), *params, host(_as_ncs(out)))
    return out


@torch.library.custom_op("deeprank::lrn_forward", mutates_args=(), device_types="cpu")
def _lrn_forward(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    require_cpu("lrn_forward", x=x)
    return _lrn_call(_C.lrn_forward, x, params=(size, alpha, beta, k))


@_lrn_forward.register_kernel("cuda")
def _lrn_forward_cuda(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    return cuda.lrn_forward(x.contiguous(), size, alpha, beta, k)


@_lrn_forward.register_fake
def _lrn_forward_fake(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    if x.device.type == "cpu" and _is_channels_last(x):
        return torch.empty_like(x, memory_format=torch.channels_last)
    return x.new_empty(x.shape)


@torch.library.custom_op("deeprank::lrn_backward", mutates_args=(), device_types="cpu")
def _lrn_backward(grad_y: Tensor, x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    require_cpu("lrn_backward", grad_y=grad_y, x=x)
    return _lrn_call(_C.lrn_backward, grad_y, x, params=(size, alpha, beta, k))


@_lrn_backward.register_kernel("cuda")
def _lrn_backward_cuda(grad_y: Tensor, x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    return cuda.lrn_backward(grad_y.contiguous(), x.contiguous(), size, alpha, beta, k)


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
    check_float_tensor("x", x)
    if x.dim() < 3:
        raise ValueError(f"x must be [N, C, H, W] or [N, C, L] (at least 3-D), got shape {tuple(x.shape)}")
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    alpha, beta, k = check_real("alpha", alpha), check_real("beta", beta), check_real("k", k)
    # Channels-last CPU tensors run in their own layout (output channels-last too); anything else is
    # made contiguous once here, so the backward does not copy the saved input again.
    if not (x.device.type == "cpu" and _is_channels_last(x)):
        x = x.contiguous()
    return torch.ops.deeprank.lrn_forward(x, size, alpha, beta, k)
