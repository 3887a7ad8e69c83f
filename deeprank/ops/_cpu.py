"""What the CPU kernels of the torch ops share: host views, reused output memory, argument checks."""

from __future__ import annotations

import math
import os
import threading
import warnings
import weakref

import numpy as np
import torch
from torch import Tensor

__all__ = ["OUTPUTS", "host"]
_DEFAULT_CACHE_MB = 256


def host(t: Tensor) -> np.ndarray:
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


def _cache_bytes() -> int:
    """``DEEPRANK_OUTPUT_CACHE_MB`` in bytes; a value that is not a whole number >= 0 warns and uses 256."""
    text = os.environ.get("DEEPRANK_OUTPUT_CACHE_MB", str(_DEFAULT_CACHE_MB))
    try:
        mb = int(text)
        if mb < 0:
            raise ValueError
    except ValueError:
        warnings.warn(
            f"DEEPRANK_OUTPUT_CACHE_MB must be a whole number of MiB >= 0, got {text!r}; "
            f"using {_DEFAULT_CACHE_MB}",
            RuntimeWarning,
            stacklevel=2,
        )
        mb = _DEFAULT_CACHE_MB
    return mb << 20


OUTPUTS = _OutputBuffers(_cache_bytes())
