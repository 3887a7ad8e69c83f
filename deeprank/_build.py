"""Build facts and thread settings of the compiled core."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from . import _C


def cuda_module() -> ModuleType | None:
    """The CUDA extension ``deeprank._cuda`` if it was built and imports here, else ``None``.

    The module links the CUDA runtime statically, so importing it needs no GPU; whether a device is
    usable is a separate question (``cuda_device_count()``).
    """
    try:
        return importlib.import_module("deeprank._cuda")
    except ImportError:
        return None


def cuda_device_count() -> int:
    """Visible CUDA devices as the CUDA module sees them; 0 without the module, a driver or a GPU."""
    mod = cuda_module()
    if mod is None or not hasattr(mod, "device_count"):
        return 0
    try:
        return int(mod.device_count())
    except RuntimeError:
        return 0


def build_info() -> dict[str, Any]:
    """How this copy of deeprank was built and what it uses at run time.

    Returns a dict with ``version``, ``compiler``, ``simd`` (the variant in use), ``simd_best``,
    ``simd_available``, ``threads``, ``cuda_compiled`` (whether ``deeprank._cuda`` was built) and
    ``cuda_devices``.
    """
    return {
        "version": _C.__version__,
        "compiler": _C.compiler,
        "simd": _C.active_isa(),
        "simd_best": _C.best_isa(),
        "simd_available": list(_C.available_isas()),
        "threads": _C.get_num_threads(),
        "cuda_compiled": cuda_module() is not None,
        "cuda_devices": cuda_device_count(),
    }


def get_num_threads() -> int:
    """Threads used by deeprank's CPU kernels."""
    return int(_C.get_num_threads())


def set_num_threads(threads: int) -> None:
    """Set the threads used by deeprank's CPU kernels (torch's own setting is separate)."""
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int, got {type(threads).__name__}")
    _C.set_num_threads(threads)
