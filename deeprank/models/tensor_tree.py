"""Nested training state <-> one safetensors file (tensors) with a JSON header (everything else): no pickle.

A training state is a tree of dicts, lists, tuples, sets, numbers, strings, ``None``, torch tensors
and numpy arrays (optimizer state with integer keys, RNG states as ``uint8`` tensors, Python and
numpy RNG states, sampler buffers). :func:`encode_tree` splits it into a JSON-able tree, where each
tensor is replaced by a reference into a flat dict of tensors, and :func:`decode_tree` puts it back,
bit for bit (floats go through ``repr``, which round-trips every float64; numpy scalars keep their
dtype). :func:`tree_to_bytes` / :func:`tree_from_bytes` store both in one safetensors file, the JSON
in its ``__metadata__`` header, so one atomic write covers the whole state.

Reading never executes anything from the file: safetensors parses a JSON header and raw tensor
bytes, and :func:`decode_tree` builds only the types listed above. Anything else is refused with a
``ValueError`` (reading) or ``TypeError`` (writing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["decode_tree", "encode_tree", "tree_from_bytes", "tree_to_bytes"]

_METADATA_KEY = "deeprank_tree"
_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__set__", "__dict__", "__npscalar__")


def encode_tree(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(json_tree, tensors)``: ``tree`` with every tensor/array replaced by a key of ``tensors``."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(obj: Any) -> Any:
        if obj is None or type(obj) in (bool, int, float, str):  # not numpy scalars, which subclass float
            return obj
        if isinstance(obj, torch.Tensor):
            key = f"t{len(tensors)}"
            # own, contiguous CPU memory: safetensors refuses shared or strided storage
            tensors[key] = obj.detach().to("cpu").contiguous().clone()
            return {"__tensor__": key}
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                raise TypeError("an object numpy array cannot be stored without pickle")
            key = f"t{len(tensors)}"
            tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
            return {"__ndarray__": key}
        if isinstance(obj, np.generic):
            return {"__npscalar__": obj.dtype.str, "value": obj.item()}
        if isinstance(obj, tuple):
            return {"__tuple__": [enc(v) for v in obj]}
        if isinstance(obj, (set, frozenset)):
            return {"__set__": [enc(v) for v in obj]}
        if isinstance(obj, list):
            return [enc(v) for v in obj]
        if isinstance(obj, Mapping):
            if all(type(k) is str and not k.startswith("__") for k in obj):
                return {k: enc(v) for k, v in obj.items()}
            return {"__dict__": [[enc(k), enc(v)] for k, v in obj.items()]}
        raise TypeError(f"a {type(obj).__name__} cannot be stored in a training state without pickle")

    return enc(tree), tensors


def decode_tree(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode_tree`; a malformed tree raises ``ValueError``."""

    def tensor(key: Any) -> torch.Tensor:
        if not isinstance(key, str) or key not in tensors:
            raise ValueError(f"the state refers to a missing tensor {key!r}")
        return tensors[key]

    def dec(obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, list):
            return [dec(v) for v in obj]
        if not isinstance(obj, dict):
            raise ValueError(f"unexpected {type(obj).__name__} in the state")
        tag = next((t for t in _TAGS if t in obj), None)
        if tag is None:
            return {k: dec(v) for k, v in obj.items()}
        value = obj[tag]
        if tag == "__tensor__":
            return tensor(value)
        if tag == "__ndarray__":
            return tensor(value).numpy()
        if tag == "__npscalar__":
            return np.dtype(str(value)).type(obj["value"])
        if not isinstance(value, list):
            raise ValueError(f"{tag} must hold a list")
        if tag == "__tuple__":
            return tuple(dec(v) for v in value)
        if tag == "__set__":
            return {dec(v) for v in value}
        if not all(isinstance(kv, list) and len(kv) == 2 for kv in value):
            raise ValueError("__dict__ must hold [key, value] pairs")
        return {dec(k): dec(v) for k, v in value}

    return dec(tree)


def tree_to_bytes(tree: Any) -> bytes:
    """``tree`` as the bytes of one safetensors file (tensors as data, the rest as JSON metadata)."""
    from safetensors.torch import save

    json_tree, tensors = encode_tree(tree)
    text = json.dumps(json_tree, separators=(",", ":"), allow_nan=True)
    return save(tensors, metadata={_METADATA_KEY: text})


def tree_from_bytes(data: bytes, what: str = "the state") -> Any:
    """Read back :func:`tree_to_bytes`; anything else (a pickle, a truncated file) raises ``ValueError``.

    ``what`` names the file in the message.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
        metadata = _metadata(data)
    except (SafetensorError, ValueError, OSError, RuntimeError, OverflowError) as exc:
        raise ValueError(
            f"{what} is not a readable deeprank state file (truncated, or not safetensors): {exc}"
        ) from None
    if metadata is None or _METADATA_KEY not in metadata:
        raise ValueError(f"{what} is a safetensors file but not a deeprank state ({_METADATA_KEY} missing)")
    try:
        tree = json.loads(metadata[_METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} has a corrupt state header: {exc}") from None
    try:
        return decode_tree(tree, tensors)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{what} has a corrupt state header: {exc}") from None


def _metadata(data: bytes) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file's header (``load`` does not return it)."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("the header runs past the end of the file")
    header = json.loads(data[8 : 8 + size])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    metadata = header.get("__metadata__")
    return metadata if isinstance(metadata, dict) else None
