"""Exact nearest-neighbour search by squared Euclidean distance: ``topk`` and ``FlatIndex``.

Input policy (both functions and ``FlatIndex``):

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
per query are recomputed as ``sum((q - x)^2)`` in float64 and rounded once to float32. A query row that
contains NaN gets all-NaN distances and indices ``0..k-1``; database rows containing NaN get NaN
distances and sort after every other row.

Memory: the ``M x N`` distance matrix is never formed. Beyond the inputs and the ``M x k`` results the
workspace is ``4N`` bytes of norms (none when ``database_norms`` is given or a ``FlatIndex`` is used),
``T * 4 * Mb * D`` for packed query blocks (``T`` threads, ``Mb <= 512``), candidate buffers of
``M * S * 12 * max(2k, k + 256)`` bytes (``S <= 2T`` database splits) and ``32 * M * k`` bytes for the
exact final pass (buffers grow beyond this only for rows tying within float32 error); see
``deeprank._C.topk_workspace_bytes``. For 1024 queries against 1M x 128 with 2 threads that is about
12.6 MB at ``k = 100`` and 82 MB at ``k = 1000`` (plus 4 MB when the norms are computed in the call).
"""

from __future__ import annotations

import operator
import sys
from typing import Any

import numpy as np

from . import _C

__all__ = ["FlatIndex", "topk"]

_CONVERTED_DTYPES = (np.float16, np.float64)
_DTYPE_POLICY = "float32 (float16, bfloat16 and float64 are converted to float32 with a copy)"


def _torch() -> Any:
    # torch is only looked at if the caller already imported it: its tensors cannot exist otherwise.
    return sys.modules.get("torch")


def _is_torch_tensor(obj: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(obj, torch.Tensor)


def _is_cuda(obj: Any) -> bool:
    if _is_torch_tensor(obj):
        return bool(obj.is_cuda)
    return hasattr(obj, "__cuda_array_interface__")


def _as_float32(obj: Any, name: str, ndim: int) -> np.ndarray:
    """A C-contiguous float32 numpy view of ``obj`` (copied only when dtype or layout demands)."""
    if _is_torch_tensor(obj):
        torch = _torch()
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


def _check_k(k: Any, n: int) -> int:
    if isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an int, got {type(k).__name__}") from None
    if k < 1 or k > n:
        raise ValueError(f"k must be between 1 and the number of database rows ({n}), got {k}")
    return k


def _check_threads(threads: Any) -> int:
    if threads is None:
        return 0  # deeprank.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (or None for deeprank.get_num_threads()), got {threads}")
    return int(threads)


def _cuda_topk(queries: Any, database: Any, k: int, database_norms: Any) -> tuple[Any, Any]:
    if not (_is_cuda(queries) and _is_cuda(database)):
        raise ValueError(
            "queries and database must be on the same kind of device: got one CUDA and one CPU input; "
            "move both to the GPU (or both to the CPU)"
        )
    if database_norms is not None and not _is_cuda(database_norms):
        raise ValueError("database_norms must be a CUDA tensor when queries and database are on the GPU")
    import torch

    from . import _cuda_ops

    def as_tensor(obj: Any) -> Any:
        return obj if isinstance(obj, torch.Tensor) else torch.as_tensor(obj, device="cuda")

    norms = None if database_norms is None else as_tensor(database_norms)
    return _cuda_ops.topk(as_tensor(queries), as_tensor(database), k, norms)


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
            returned by ``FlatIndex.norms`` or ``deeprank._C.squared_norms``); saves a pass over the
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
    nthreads = _check_threads(threads)
    q = _as_float32(queries, "queries", 2)
    x = _as_float32(database, "database", 2)
    if q.shape[1] != x.shape[1]:
        raise ValueError(
            "queries and database must have the same number of columns (D), "
            f"got queries D={q.shape[1]} and database D={x.shape[1]}"
        )
    k = _check_k(k, x.shape[0])
    norms = None if database_norms is None else _as_float32(database_norms, "database_norms", 1)
    distances, indices = _C.topk(q, x, k, database_norms=norms, threads=nthreads)
    if _is_torch_tensor(queries):
        torch = _torch()
        return torch.from_numpy(distances), torch.from_numpy(indices)
    return distances, indices


class FlatIndex:
    """A growable set of vectors with cached squared norms, searched exactly with :func:`topk`.

    Example::

        index = deeprank.FlatIndex(embeddings)          # [N, D]
        distances, indices = index.search(queries, k=10)
        index.add(more_embeddings)                      # rows N, N+1, ... in order

    Args:
        database: ``[N, D]`` initial vectors (``N`` may be 0 to start empty); same dtype and layout
            policy as :func:`topk`.
        copy: if True (default) the index owns a float32 copy. If False, a C-contiguous float32 input
            is used in place (no copy; do not modify it while the index uses it) until the first
            :meth:`add`, which moves the data into storage the index owns.
    """

    def __init__(self, database: Any, *, copy: bool = True) -> None:
        x = _as_float32(database, "database", 2)
        if x.shape[1] < 1:
            raise ValueError("database must have at least one column (D >= 1)")
        borrowed = x is database or not x.flags.owndata  # a view of the caller's memory
        if copy and borrowed:
            x = x.copy()
        self._data = x
        self._owned = copy or not borrowed  # False: rows are the caller's; add() moves them first
        self._norms = _C.squared_norms(x) if x.shape[0] else np.empty(0, dtype=np.float32)
        self._size = x.shape[0]

    @property
    def dim(self) -> int:
        """Vector dimension ``D``."""
        return int(self._data.shape[1])

    def __len__(self) -> int:
        return self._size

    @property
    def vectors(self) -> np.ndarray:
        """The stored ``[N, D]`` float32 vectors (a read-only view)."""
        view = self._data[: self._size]
        view = view.view()
        view.flags.writeable = False
        return view

    @property
    def norms(self) -> np.ndarray:
        """Cached squared norms ``||x_i||^2``, float32 ``[N]`` (a read-only view)."""
        view = self._norms[: self._size].view()
        view.flags.writeable = False
        return view

    def add(self, vectors: Any) -> None:
        """Append ``[n, D]`` vectors; they get indices ``len(self) .. len(self) + n - 1``."""
        x = _as_float32(vectors, "vectors", 2)
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors must have D={self.dim} columns like the index, got D={x.shape[1]}")
        n_new = x.shape[0]
        if n_new == 0:
            return
        need = self._size + n_new
        if need > self._data.shape[0] or not self._owned:
            # Grow geometrically so repeated small adds stay amortised O(1) per row.
            capacity = max(need, 2 * self._size, 16)
            data = np.empty((capacity, self.dim), dtype=np.float32)
            data[: self._size] = self._data[: self._size]
            norms = np.empty(capacity, dtype=np.float32)
            norms[: self._size] = self._norms[: self._size]
            self._data, self._norms = data, norms
            self._owned = True
        self._data[self._size : need] = x
        self._norms[self._size : need] = _C.squared_norms(x)
        self._size = need

    def search(self, queries: Any, k: int, *, threads: int | None = None) -> tuple[Any, Any]:
        """The ``k`` nearest stored vectors of each query; same contract as :func:`topk`."""
        if self._size == 0:
            raise ValueError("k must be between 1 and the number of database rows (0), got an empty index")
        return topk(
            queries,
            self._data[: self._size],
            k,
            database_norms=self._norms[: self._size],
            threads=threads,
        )

    def __repr__(self) -> str:
        return f"FlatIndex(n={self._size}, dim={self.dim})"
