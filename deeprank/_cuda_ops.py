"""CUDA entry points used by the op dispatchers (placeholder until the CUDA kernels land).

Contract (all arguments and results are contiguous torch CUDA tensors on one device; work is
enqueued on torch's current stream):
  topk(queries, database, k, database_norms=None) -> (distances float32 [M,k], indices int64 [M,k])
  triplet_forward(q, p, n, margin) -> losses [B]
  triplet_backward(grad_losses, q, p, n, margin) -> (dq, dp, dn)
  lrn_forward(x, size, alpha, beta, k) -> y
  lrn_backward(grad_y, x, size, alpha, beta, k) -> grad_x
"""

from __future__ import annotations


def _unavailable(*_args, **_kwargs):
    raise RuntimeError("deeprank was built without its CUDA module (deeprank._cuda); CUDA tensors are not supported")


topk = triplet_forward = triplet_backward = lrn_forward = lrn_backward = _unavailable
