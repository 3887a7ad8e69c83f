"""Type stub of the CPU extension ``deeprank._C`` (buffer-protocol arrays in, numpy arrays out)."""

from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str
compiler: str

# Threads and SIMD variants (csrc/common/bind_common.cpp).
def get_num_threads() -> int:
    """Threads used by deeprank's CPU kernels."""

def set_num_threads(threads: int) -> None:
    """Set the threads used by deeprank's CPU kernels (does not affect torch); ``threads >= 1``."""

def active_isa() -> str:
    """SIMD variant the kernels use now: 'generic', 'avx2' or 'avx512'."""

def best_isa() -> str:
    """Widest SIMD variant this CPU supports."""

def available_isas() -> list[str]:
    """SIMD variants usable on this CPU, narrowest first."""

def set_isa(isa: str) -> None:
    """Force a SIMD variant ('auto' restores detection). Meant for tests and benchmarks."""

# Top-K search (csrc/topk/topk_bindings.cpp). Arrays must be C-contiguous float32.
def topk(
    queries: Any,
    database: Any,
    k: int,
    *,
    database_norms: Any | None = None,
    threads: int = 0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Exact k nearest neighbours by squared Euclidean distance; ``threads=0`` uses the default."""

def squared_norms(x: Any, *, threads: int = 0) -> npt.NDArray[np.float32]:
    """Squared L2 norm of every row of a C-contiguous float32 [N, D] array."""

def topk_workspace_bytes(
    m: int, n: int, d: int, k: int, *, threads: int = 0, norms_given: bool = False
) -> int:
    """Upper bound of topk's workspace beyond inputs and results, in bytes."""

# Triplet ranking loss (csrc/triplet/triplet_bindings.cpp). float32 or float64, C-contiguous; outputs are
# written into the given arrays.
def triplet_forward(q: Any, p: Any, n: Any, margin: float, losses: Any) -> None:
    """Per-triplet hinge max(0, margin + |q-p|^2 - |q-n|^2) of [B, D] arrays into losses [B]."""

def triplet_backward(
    grad_losses: Any, q: Any, p: Any, n: Any, margin: float, dq: Any, dp: Any, dn: Any
) -> None:
    """Gradients of the per-triplet hinge into dq, dp, dn [B, D]: zero where satisfied, NaN where NaN."""

# Local response normalization (csrc/lrn/lrn_bindings.cpp), arrays viewed as [N, C, S], or as
# [N, S, C] with channels_last (an NHWC tensor's memory order).
def lrn_forward(
    x: Any, size: int, alpha: float, beta: float, k: float, y: Any, channels_last: bool = False
) -> None:
    """Across-channel LRN of x into y, as torch.nn.functional.local_response_norm."""

def lrn_backward(
    grad_y: Any,
    x: Any,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    grad_x: Any,
    channels_last: bool = False,
) -> None:
    """Gradient of lrn_forward with respect to x, recomputing the window sums from x."""
