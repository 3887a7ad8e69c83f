"""Reading a user's weight file for the ConvNet branch (by name, else by layer order and shape)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["match_by_order", "read_state_dict"]


def read_state_dict(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return {str(k): v for k, v in source.items() if isinstance(v, torch.Tensor)}
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    # A file that is not a weight file (an image, a truncated download, a pickle of other objects)
    # is one clear error, not the loader's traceback.
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable safetensors weight file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError):
        # torch's own message advises weights_only=False, which would run code from the file: not shown
        raise ValueError(
            f"{path} is not a weight file (a .safetensors file or a torch state dict of plain tensors "
            "expected)"
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def match_by_order(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Pair the i-th 4-D/2-D weight (and its bias) of ``state`` with the i-th of ``target``."""

    def layers(sd: Mapping[str, torch.Tensor]) -> list[tuple[str, str | None]]:
        out = []
        for key, value in sd.items():
            if key.endswith("weight") and value.dim() in (2, 4):
                bias = key[: -len("weight")] + "bias"
                out.append((key, bias if bias in sd else None))
        return out

    src, dst = layers(state), layers(target)
    if len(src) < len(dst):
        return {}
    matched: dict[str, torch.Tensor] = {}
    for (sw, sb), (dw, db) in zip(src, dst, strict=False):
        matched[dw] = state[sw]
        if db is not None and sb is not None:
            matched[db] = state[sb]
    return matched
