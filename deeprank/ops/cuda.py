"""CUDA entry points used by the op dispatchers (deeprank.topk, deeprank.triplet_loss, deeprank.lrn).

Contract (all arguments and results are contiguous torch CUDA tensors on one device; work is
enqueued on torch's current stream of that device, and nothing synchronises):
  topk(queries, database, k, database_norms=None) -> (distances float32 [M,k], indices int64 [M,k])
  triplet_forward(q, p, n, margin) -> losses [B]
  triplet_backward(grad_losses, q, p, n, margin) -> (dq, dp, dn)
  lrn_forward(x, size, alpha, beta, k) -> y
  lrn_backward(grad_y, x, size, alpha, beta, k) -> grad_x

Semantics are those of the CPU ops (see ``deeprank.ops.reference``):
  * top-K: squared L2, rows ascending by (distance, index), distances float32(float64 sum((q-x)^2))
    (so never negative), a NaN query row gives NaN distances with indices 0..k-1, database rows with
    NaN sort last; float32 only; 1 <= k <= N; k up to 2048 on sm_80/sm_90 (more where the GPU's
    shared memory allows: the error says how much). ``database_norms`` is accepted for interface
    compatibility and not needed: the kernel forms (q - x)^2 directly.
  * triplet: per triplet max(0, margin + |q-p|^2 - |q-n|^2), NaN propagates; backward
    dq = 2g(n-p), dp = 2g(p-q), dn = 2g(q-n) where the hinge argument is > 0, exactly 0 where it is
    <= 0, NaN where it is NaN. float32 or float64.
  * LRN: torch.nn.functional.local_response_norm on [N, C, *spatial] (3-D or more); backward
    recomputes the scale from x. float32 or float64. Windows up to ``deeprank._cuda.lrn_max_size``
    (32) channels run the sliding-window kernels; wider ones (rare) fall back to torch's own ops on
    the GPU.

Workspace (allocated here through torch, so torch's caching allocator serves it):
  * top-K: M * S * (k + 32) int64 elements, S = the number of database splits chosen by
    ``deeprank._cuda.topk_plan`` (about 4 blocks per SM over all query tiles; M = 1 gets the most).
  * triplet and LRN: none.

Bad arguments raise TypeError (wrong type/dtype) or ValueError (shape, device, contiguity, ranges),
naming the argument.
"""

from __future__ import annotations

from types import ModuleType

import torch

from .._build import cuda_module
from .checks import check_k

__all__ = [
    "lrn_backward",
    "lrn_forward",
    "topk",
    "triplet_backward",
    "triplet_forward",
]

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _module() -> ModuleType:
    mod = cuda_module()
    if mod is None:
        raise RuntimeError(
            "deeprank was built without its CUDA module (deeprank._cuda); CUDA tensors are not supported"
        )
    return mod


def _check_tensor(name: str, t: object, ndim: int, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    """Checks a CUDA tensor argument; ``ndim`` < 0 means "at least -ndim dimensions"."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch CUDA tensor, got {type(t).__name__}")
    if not t.is_cuda:
        raise ValueError(f"{name} must be on a CUDA device, got {t.device}")
    if (ndim >= 0 and t.dim() != ndim) or (ndim < 0 and t.dim() < -ndim):
        want = f"{ndim}-D" if ndim >= 0 else f"at least {-ndim}-D"
        raise ValueError(f"{name} must be {want}, got {t.dim()}-D with shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        want = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must be {want}, got {str(t.dtype).replace('torch.', '')}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return t


def _same_device(first: torch.Tensor, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but the other inputs are on {first.device}; move them to one device"
            )


def _stream(device: torch.device) -> int:
    return int(torch.cuda.current_stream(device).cuda_stream)


def topk(
    queries: torch.Tensor, database: torch.Tensor, k: int, database_norms: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of each query row among the database rows, on the GPU.

    Args:
        queries: float32 CUDA tensor [M, D].
        database: float32 CUDA tensor [N, D] on the same device.
        k: neighbours per query, 1 <= k <= N.
        database_norms: optional float32 [N] tensor of squared row norms (checked, not needed).

    Returns:
        ``(distances, indices)``: float32 [M, k] squared L2 distances ascending and int64 [M, k] rows.
    """
    q = _check_tensor("queries", queries, 2, (torch.float32,))
    x = _check_tensor("database", database, 2, (torch.float32,))
    _same_device(q, database=x)
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but database rows have {x.shape[1]}")
    if database_norms is not None:
        norms = _check_tensor("database_norms", database_norms, 1, (torch.float32,))
        _same_device(q, database_norms=norms)
        if norms.shape[0] != x.shape[0]:
            raise ValueError(f"database_norms must have {x.shape[0]} entries, got {norms.shape[0]}")
    m, d = q.shape
    n = x.shape[0]
    k = check_k(k, n)
    if d == 0:
        raise ValueError("queries and database must have at least one column")
    device = q.device
    dist = torch.empty((m, k), dtype=torch.float32, device=device)
    idx = torch.empty((m, k), dtype=torch.int64, device=device)
    if m == 0:
        return dist, idx
    mod = _module()
    with torch.cuda.device(device):
        plan = mod.topk_plan(m, n, d, k, device.index)
        workspace = torch.empty(plan["workspace_elems"], dtype=torch.int64, device=device)
        mod.topk(
            q.data_ptr(),
            x.data_ptr(),
            m,
            n,
            d,
            k,
            workspace.data_ptr(),
            workspace.numel(),
            dist.data_ptr(),
            idx.data_ptr(),
            _stream(device),
            device.index,
        )
    return dist, idx


def _check_triplet(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> None:
    _check_tensor("q", q, 2, tuple(_DTYPES))
    _check_tensor("p", p, 2, tuple(_DTYPES))
    _check_tensor("n", n, 2, tuple(_DTYPES))
    _same_device(q, p=p, n=n)
    if p.shape != q.shape or n.shape != q.shape:
        raise ValueError(
            f"q, p and n must have the same shape, got {tuple(q.shape)}, {tuple(p.shape)}, {tuple(n.shape)}"
        )
    if p.dtype != q.dtype or n.dtype != q.dtype:
        raise TypeError(f"q, p and n must have one dtype, got {q.dtype}, {p.dtype}, {n.dtype}")


def triplet_forward(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-triplet hinge ``max(0, margin + |q-p|^2 - |q-n|^2)`` of [B, D] CUDA tensors -> [B]."""
    _check_triplet(q, p, n)
    rows, dim = q.shape
    device = q.device
    losses = torch.empty(rows, dtype=q.dtype, device=device)
    if rows == 0:
        return losses
    with torch.cuda.device(device):
        _module().triplet_forward(
            _DTYPES[q.dtype],
            q.data_ptr(),
            p.data_ptr(),
            n.data_ptr(),
            rows,
            dim,
            float(margin),
            losses.data_ptr(),
            _stream(device),
            device.index,
        )
    return losses


def triplet_backward(
    grad_losses: torch.Tensor, q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the per-triplet losses (recomputed from q, p, n) -> ``(dq, dp, dn)``."""
    _check_triplet(q, p, n)
    g = _check_tensor("grad_losses", grad_losses, 1, (q.dtype,))
    _same_device(q, grad_losses=g)
    rows, dim = q.shape
    if g.shape[0] != rows:
        raise ValueError(f"grad_losses must have {rows} entries, got {g.shape[0]}")
    device = q.device
    dq, dp, dn = torch.empty_like(q), torch.empty_like(p), torch.empty_like(n)
    if rows == 0 or dim == 0:
        return dq, dp, dn
    with torch.cuda.device(device):
        _module().triplet_backward(
            _DTYPES[q.dtype],
            g.data_ptr(),
            q.data_ptr(),
            p.data_ptr(),
            n.data_ptr(),
            rows,
            dim,
            float(margin),
            dq.data_ptr(),
            dp.data_ptr(),
            dn.data_ptr(),
            _stream(device),
            device.index,
        )
    return dq, dp, dn


def _lrn_shape(x: torch.Tensor) -> tuple[int, int, int]:
    batch, channels = x.shape[0], x.shape[1]
    spatial = 1
    for s in x.shape[2:]:
        spatial *= s
    return batch, channels, spatial


_LRN_DIMS = -3  # [N, C, *spatial]


def _check_lrn_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")


def _lrn_fallback(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    # Windows wider than the kernels' register rings: torch's composed ops, on the same device/stream.
    return torch.nn.functional.local_response_norm(x, size, alpha=alpha, beta=beta, k=k)


def lrn_forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Across-channel LRN of a [N, C, *spatial] CUDA tensor (torch's local_response_norm)."""
    _check_tensor("x", x, _LRN_DIMS, tuple(_DTYPES))
    _check_lrn_size(size)
    mod = _module()
    if size > mod.lrn_max_size:
        with torch.no_grad():
            return _lrn_fallback(x, size, alpha, beta, k)
    y = torch.empty_like(x)
    batch, channels, spatial = _lrn_shape(x)
    if y.numel() == 0:
        return y
    device = x.device
    with torch.cuda.device(device):
        mod.lrn_forward(
            _DTYPES[x.dtype],
            x.data_ptr(),
            batch,
            channels,
            spatial,
            size,
            float(alpha),
            float(beta),
            float(k),
            y.data_ptr(),
            _stream(device),
            device.index,
        )
    return y


def lrn_backward(
    grad_y: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> torch.Tensor:
    """Gradient of :func:`lrn_forward` with respect to x (the scale is recomputed from x)."""
    _check_tensor("x", x, _LRN_DIMS, tuple(_DTYPES))
    g = _check_tensor("grad_y", grad_y, _LRN_DIMS, (x.dtype,))
    _same_device(x, grad_y=g)
    if g.shape != x.shape:
        raise ValueError(f"grad_y must have the shape of x {tuple(x.shape)}, got {tuple(g.shape)}")
    _check_lrn_size(size)
    mod = _module()
    if size > mod.lrn_max_size:
        with torch.enable_grad():
            xr = x.detach().requires_grad_()
            (grad_x,) = torch.autograd.grad(_lrn_fallback(xr, size, alpha, beta, k), xr, g)
        return grad_x
    grad_x = torch.empty_like(x)
    batch, channels, spatial = _lrn_shape(x)
    if grad_x.numel() == 0:
        return grad_x
    device = x.device
    with torch.cuda.device(device):
        mod.lrn_backward(
            _DTYPES[x.dtype],
            g.data_ptr(),
            x.data_ptr(),
            batch,
            channels,
            spatial,
            size,
            float(alpha),
            float(beta),
            float(k),
            grad_x.data_ptr(),
            _stream(device),
            device.index,
        )
    return grad_x
