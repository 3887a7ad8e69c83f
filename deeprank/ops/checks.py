"""Argument checks of the public ops, in one place; each raises TypeError/ValueError naming the argument."""

from __future__ import annotations

import math
import operator
from numbers import Real
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "check_float_tensor",
    "check_k",
    "check_real",
    "check_threads",
    "require_cpu",
    "require_same_device",
]

_FLOAT_DTYPES = (torch.float32, torch.float64)


def require_cpu(op: str, **tensors: Tensor) -> None:
    """The CPU kernels of ``deeprank::op`` were handed only CPU tensors."""
    for name, t in tensors.items():
        if t.device.type != "cpu":
            raise ValueError(f"deeprank::{op}: {name} is on {t.device}, expected all tensors on cpu")


def require_same_device(op: str, **tensors: Tensor) -> None:
    """All ``tensors`` of a public op are on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {listed}")


def check_real(name: str, value: object, *, finite: bool = True) -> float:
    """A real-number argument as a float (not bool; finite unless ``finite=False``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_float_tensor(name: str, t: object) -> Tensor:
    """A float32 or float64 tensor argument."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    return t


def check_k(k: Any, n: int, what: str = "the number of database rows") -> int:
    """``k`` as an int in ``[1, n]``: the one check of a user's ``k`` (topk on CPU and CUDA, FlatIndex,
    Index, evaluation, the CLI and the server all call it). ``what`` names ``n`` in the message."""
    if isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an int, got {type(k).__name__}") from None
    if k < 1 or k > n:
        raise ValueError(f"k must be between 1 and {what} ({n}), got {k}")
    return k


def check_threads(threads: Any) -> int:
    """A ``threads=`` argument for the kernels: ``None`` -> 0 (the default), else an int >= 1."""
    if threads is None:
        return 0  # deeprank.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (or None for deeprank.get_num_threads()), got {threads}")
    return int(threads)
