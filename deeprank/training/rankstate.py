"""Per-rank training state of a distributed run: ``rank-{r}.json`` next to the checkpoint.

Rank 0's checkpoint (weights, ``config.json``, the training state) is that of a one-process run.
Each rank ``r`` also writes ``rank-{r}.json``: its own sampler buffers, pass position and random
states, with the world size and the step they belong to, so ``--resume`` on the same world size
continues every rank exactly. Plain JSON: tuples, tensors, arrays and non-finite floats are tagged
objects (``{"__tuple__": [...]}``, ``{"__tensor__": base64, ...}``); nothing is unpickled.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import write_json_atomic

__all__ = ["FORMAT", "decode", "encode", "load_rank_state", "rank_file", "save_rank_state"]

FORMAT = "deeprank-rank-state"
VERSION = 1


def rank_file(directory: str | Path, rank: int) -> Path:
    return Path(directory) / f"rank-{rank}.json"


def encode(obj: Any) -> Any:
    """``obj`` as plain JSON values, tagging what JSON cannot say (see the module docstring)."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.generic):
        return encode(obj.item())
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v) for v in obj]}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, Mapping):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"rank state keys must be strings, got {list(obj)[:3]}")
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        data = t.view(torch.uint8) if t.dtype != torch.uint8 else t
        return {
            "__tensor__": base64.b64encode(data.numpy().tobytes()).decode(),
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
        }
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    raise TypeError(f"{type(obj).__name__} cannot go into a rank state")


def decode(obj: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tuple__" in obj:
        return tuple(decode(v) for v in obj["__tuple__"])
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tensor__" in obj:
        raw = bytearray(base64.b64decode(obj["__tensor__"]))
        dtype = getattr(torch, obj["dtype"])
        flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        return flat.view(dtype).reshape(obj["shape"]).clone()
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    return {k: decode(v) for k, v in obj.items()}


def save_rank_state(directory: str | Path, rank: int, world_size: int, step: int, state: Mapping) -> Path:
    """Write rank ``rank``'s state of step ``step`` atomically; returns the file."""
    payload = {"format": FORMAT, "version": VERSION, "rank": rank, "world_size": world_size, "step": step}
    payload["state"] = encode(dict(state))
    return write_json_atomic(rank_file(directory, rank), payload, indent=None, allow_nan=False)


def load_rank_state(directory: str | Path, rank: int) -> dict[str, Any] | None:
    """Rank ``rank``'s saved ``{"world_size", "step", "state"}``, or ``None`` if absent or unreadable."""
    path = rank_file(directory, rank)
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("rank") != rank:
        return None
    try:
        return {
            "world_size": int(payload["world_size"]),
            "step": int(payload["step"]),
            "state": decode(payload["state"]),
        }
    except (KeyError, TypeError, ValueError):
        return None
