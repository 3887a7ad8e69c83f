"""Exact nearest-neighbour search by squared Euclidean distance: :func:`topk`, and its input policy.

Input policy (``topk`` and :class:`deeprank.index.FlatIndex`):

- Arrays may be numpy arrays, torch tensors or anything ``numpy.asarray`` accepts. Results are torch
  tensors when ``queries`` is a torch tensor, numpy arrays otherwise.
- dtype: float32 is used as is. float16, bfloat16 (torch) and float64 are converted to float32 with a
  copy. Any other dtype (integers, bool, complex) raises ``TypeError``.
- Layout: C-contiguous float32 input is used in place (torch CPU tensors through ``Tensor.numpy()``,
  zero-copy). Non-contiguous input (slices with steps, transposes) is copied once into a contiguous
  array; pass contiguous arrays to avoid the copy.
- CUDA: if ``queries`` or ``database`` is a torch CUDA tensor or exposes ``__cuda_array_interface__``,
  the search runs on the GPU through ``deeprank._cuda``; mixing a CUDA and a CPU input raises
  ``ValueError``.

Results: ``(distances, indices)``, both ``[M, k]``; distances float32 ``>= 0``, indices int64. Each row
is sorted by ascending distance, equal distances by smaller index. Distances are exact: the final k
per query are recomputed as ``sum((q - x)^2)`` in float64 and rounded once to float32. Distances too
large for float32 (inputs around 1e19 and beyond) are reported as ``inf`` but ranked by their float64
value on the CPU (the CUDA kernel ranks in float32: there they tie and come in index order). A query row that
contains NaN gets all-NaN distances and indices ``0..k-1``; database rows containing NaN get NaN
distances and sort after every other row.

Memory: the ``M x N`` distance matrix is never formed. Beyond the inputs and the ``M x k`` results the
workspace is ``4N`` bytes of norms (none when ``database_norms`` is given or a ``FlatIndex`` is used),
``T * 4 * Mb * D`` for packed query blocks (``T`` threads, ``Mb <= 512``), candidate buffers of
``M * S * 12 * max(2k, k + 256)`` bytes (``S <= 2T`` database splits) and ``36 * M * k`` bytes for the
exact final pass (buffers grow beyond this only for rows tying within float32 error); see
``deeprank._C.topk_workspace_bytes``. For 1024 queries against 1M x 128 with 2 threads that is about
13.0 MB at ``k = 100`` and 87 MB at ``k = 1000`` (plus 4 MB when the norms are computed in the call).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _C
from .checks import check_k, check_threads

__all__ = ["as_float32", "topk"]

_CONVERTED_DTYPES = (np.float16, np.float64)
_DTYPE_POLICY = "float32 (float16, bfloat16 and float64 are converted to float32 with a copy)"


def _is_cuda(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return bool(obj.is_cuda)
    return hasattr(obj, "__cuda_array_interface__")


def as_float32(obj: Any, name: str, ndim: int) -> np.ndarray:
    """A C-contiguous float32 numpy view of ``obj`` (copied only when dtype or layout demands)."""
    if isinstance(obj, torch.Tensor):
        if obj.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU or CUDA tensor, got device {obj.device}")
        if obj.dtype in (torch.float16, torch.bfloat16, torch.float64):
            obj = obj.to(torch.float32)
        elif obj.dtype != torch.float32:
            raise TypeError(
                f"{name} must have dtype {_DTYPE_POLICY}, got torch.{str(obj.dtype).split('.')[-1]}"
            )
        arr = obj.detach().numpy()
    else:
        arr = obj if isinstance(obj, np.ndarray) else np.asarray(obj)
        if arr.dtype != np.float32:
            if arr.dtype.type not in _CONVERTED_DTYPES:
                raise TypeError(f"{name} must have dtype {_DTYPE_POLICY}, got {arr.dtype}")
            arr = arr.astype(np.float32)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got {arr.ndim}-D with shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr)


def _cuda_topk(queries: Any, database: Any, k: int, database_norms: Any) -> tuple[Any, Any]:
    if not (_is_cuda(queries) and _is_cuda(database)):
        raise ValueError(
            "queries and database must be on the same kind of device: got one CUDA and one CPU input; "
            "move both to the GPU (or both to the CPU)"
        )
    if database_norms is not None and not _is_cuda(database_norms):
        raise ValueError("database_norms must be a CUDA tensor when queries and database are on the GPU")
    from . import cuda

    def as_tensor(obj: Any) -> Any:
        return obj if isinstance(obj, torch.Tensor) else torch.as_tensor(obj, device="cuda")

    norms = None if database_norms is None else as_tensor(database_norms)
    return cuda.topk(as_tensor(queries), as_tensor(database), k, norms)


def topk(
    queries: Any,
    database: Any,
    k: int,
    *,
    database_norms: Any = None,
    threads: int | None = None,
) -> tuple[Any, Any]:
    """Exact k nearest neighbours of each query row in ``database`` by squared Euclidean distance.

    Args:
        queries: ``[M, D]`` query vectors (``M`` may be 0).
        database: ``[N, D]`` vectors to search.
        k: neighbours per query, ``1 <= k <= N``.
        database_norms: optional ``[N]`` float32 squared norms ``||x_i||^2`` of the database rows (as
            returned by ``deeprank.FlatIndex.norms`` or ``deeprank._C.squared_norms``); saves a pass over the
            database on repeated calls. They must match ``database``: wrong norms give wrong results.
        threads: CPU threads for this call; ``None`` uses ``deeprank.get_num_threads()``.

    Returns:
        ``(distances, indices)``, float32 and int64 ``[M, k]``, each row sorted ascending with ties by
        smaller index. torch tensors if ``queries`` is a torch tensor, numpy arrays otherwise. See the
        module docstring for dtype, layout, NaN and memory policies.

    Raises:
        TypeError: unsupported dtype or a non-integer ``k``/``threads``.
        ValueError: wrong number of dimensions, mismatched ``D`` or ``N``, ``k`` out of range, or a
            mix of CUDA and CPU inputs.
    """
    if _is_cuda(queries) or _is_cuda(database):
        return _cuda_topk(queries, database, k, database_norms)
    nthreads = check_threads(threads)
    q = as_float32(queries, "queries", 2)
    x = as_float32(database, "database", 2)
    if q.shape[1] != x.shape[1]:
        raise ValueError(
            "queries and database must have the same number of columns (D), "
            f"got queries D={q.shape[1]} and database D={x.shape[1]}"
        )
    k = check_k(k, x.shape[0])
    norms = None if database_norms is None else as_float32(database_norms, "database_norms", 1)
    distances, indices = _C.topk(q, x, k, database_norms=norms, threads=nthreads)
    if isinstance(queries, torch.Tensor):
        return torch.from_numpy(distances), torch.from_numpy(indices)
    return distances, indices
