"""Checkpoints: weights in safetensors, configuration in JSON, optional training state; atomic writes.

A checkpoint is a directory::

    model.safetensors        the network's state dict (weights and buffers)
    config.json              {"format": "deeprank-checkpoint", "version": 1, "model": <model.config>, ...}
    train_state.safetensors  optional, for --resume: optimizer, RNG states, counters, sampler state,
                             the training settings and its own copy of the weights

Nothing here is unpickled: the training state is one safetensors file whose tensors are raw data and
whose other entries are JSON in its header (:mod:`deeprank.models.tensor_tree`). A ``train_state.pt``
of an older deeprank (a pickle) is refused, never opened.

Each file is written atomically (:mod:`deeprank.io`), so a crash leaves either the old file or the new
one, never half a file. The weights, then the training state, then ``config.json`` are written;
``config.json`` records the step they belong to. A kill between two of them can leave files of two
consecutive saves side by side, each whole: the weights and ``config.json`` always load, and the
training state, which carries the weights it belongs to, is by itself a consistent point to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..io import sha256_file, write_bytes_atomic
from .tensor_tree import tree_from_bytes, tree_to_bytes

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "LEGACY_STATE_FILE",
    "STATE_FILE",
    "STATE_FORMAT",
    "WEIGHTS_FILE",
    "config_hash",
    "load_config",
    "load_model",
    "load_state_model",
    "load_train_state",
    "resolve_model",
    "save_checkpoint",
    "weights_hash",
]

FORMAT = "deeprank-checkpoint"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.safetensors"
STATE_FORMAT = "deeprank-train-state"
#: the pickled training state of deeprank before 0.x: refused on resume, never unpickled
LEGACY_STATE_FILE = "train_state.pt"


def _arch(config: Mapping[str, Any]) -> Mapping[str, Any]:
    model = config.get("model")
    return model if isinstance(model, Mapping) else config


def config_hash(config: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of the architecture part of a config.

    Accepts a model config (``model.config``) or a checkpoint config (uses its ``"model"`` entry).
    Two models with equal hashes take the same input and produce embeddings in the same space shape
    (same preset, sizes, widths, normalisation); indexes store it to detect a model mismatch.
    Training settings never enter the hash.
    """
    text = json.dumps(_arch(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_hash(directory: str | os.PathLike) -> str:
    """The hex sha256 of a checkpoint's ``model.safetensors`` (what an index records of its weights)."""
    return sha256_file(Path(directory) / WEIGHTS_FILE)


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    config: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` (a :class:`~deeprank.models.MultiScaleNet`) into ``directory``.

    Args:
        directory: created if missing; existing checkpoint files are replaced atomically.
        model: its ``state_dict`` goes to ``model.safetensors`` and its ``config`` to
            ``config.json["model"]``.
        config: extra JSON-able entries for ``config.json`` (e.g. ``"train"`` settings, ``"progress"``).
        state: optional training state (optimizer state dict, RNG states, counters, sampler state:
            dicts, lists, tuples, numbers, strings, tensors, numpy arrays), saved with a copy of the
            weights and the model config to ``train_state.safetensors`` for ``--resume``.

    Returns the directory.
    """
    from safetensors.torch import save as save_safetensors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_config = getattr(model, "config", None)
    if not isinstance(model_config, Mapping):
        raise TypeError("model must have a .config dict (a deeprank.models.MultiScaleNet)")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(directory / WEIGHTS_FILE, save_safetensors(tensors))
    if state is not None:
        # The state carries the weights it belongs to, so the one file --resume reads is consistent
        # by itself whatever a kill between this save's files left (see the module docstring).
        tree = {**dict(state), "format": STATE_FORMAT, "model": dict(model_config), "weights": tensors}
        write_bytes_atomic(directory / STATE_FILE, tree_to_bytes(tree))
    payload: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    payload.update(dict(config or {}))
    payload["model"] = dict(model_config)
    payload["model_hash"] = config_hash(model_config)
    text = json.dumps(payload, indent=2, sort_keys=True, default=_json_default)
    write_bytes_atomic(directory / CONFIG_FILE, (text + "\n").encode())
    return directory


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def load_config(directory: str | Path) -> dict[str, Any]:
    """Read and check ``config.json`` of a checkpoint directory."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a deeprank checkpoint: {CONFIG_FILE} is missing")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or "model" not in config:
        raise ValueError(f"{path} is not a deeprank checkpoint config (format {FORMAT!r} expected)")
    if int(config.get("version", 0)) > VERSION:
        raise ValueError(f"{path} has checkpoint version {config['version']}; this deeprank reads {VERSION}")
    return config


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the model of a checkpoint and load its weights.

    Returns ``(model, config)`` with the model in eval mode on ``device`` and ``config`` the full
    ``config.json`` dict. Raises ``FileNotFoundError`` for a missing checkpoint and ``ValueError`` for
    a corrupt one (unreadable weights, or weights that do not fit the configured architecture).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .multiscale import build_model

    directory = Path(directory)
    config = load_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{directory} is not a deeprank checkpoint: {WEIGHTS_FILE} is missing")
    model = build_model(config["model"])
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{weights} is not a readable safetensors file: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights} does not match the architecture in {CONFIG_FILE}: {exc}") from None
    model.to(device).eval()
    return model, config


def load_train_state(directory: str | Path) -> dict[str, Any] | None:
    """The training state saved with a checkpoint, or ``None`` if it has none.

    The dict given to ``save_checkpoint(state=...)`` plus ``"model"`` (the model config) and
    ``"weights"`` (the state dict it belongs to). A truncated or foreign file raises ``ValueError``;
    so does a pickled ``train_state.pt`` of an older deeprank, which is never opened.
    """
    directory = Path(directory)
    path = directory / STATE_FILE
    if not path.is_file():
        legacy = directory / LEGACY_STATE_FILE
        if legacy.exists():
            raise ValueError(
                f"{legacy} is a pickled training state (an older deeprank's format); deeprank does not "
                "unpickle files, since that can run code from them: resume with the deeprank that wrote "
                "it, or start a new run with --overwrite"
            )
        return None
    state = tree_from_bytes(path.read_bytes(), str(path))
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a deeprank training state (format {STATE_FORMAT!r} expected)")
    if not isinstance(state.get("weights"), dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"{path} is not a deeprank training state (its weights or model config are missing)")
    return state


def load_state_model(state: Mapping[str, Any], path: str | Path) -> Any:
    """The model of a :func:`load_train_state` state (eval mode, CPU); ``path`` names it in errors."""
    from .multiscale import build_model

    try:
        model = build_model(state["model"])
        model.load_state_dict(state["weights"], strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: its weights do not fit its model config: {exc}") from None
    return model.eval()


def resolve_model(
    model: Any, device: str | torch.device | None = None
) -> tuple[torch.nn.Module, Path | None]:
    """A model in eval mode from a model or a checkpoint directory, with that directory (if any).

    The one place where "a model or a checkpoint" arguments (``Index.build``, ``evaluate``, ``serve``)
    become a model. A checkpoint is loaded on ``device`` (default CPU; a model given is left where it
    is) and remembers its directory (``checkpoint_dir``), so a model passed on keeps naming it.
    """
    if isinstance(model, (str, os.PathLike)):
        directory = Path(model)
        if not directory.exists():
            raise FileNotFoundError(f"model checkpoint not found: {directory}")
        loaded, _ = load_model(directory, device="cpu" if device is None else device)
        loaded.checkpoint_dir = directory.resolve()
        return loaded, directory.resolve()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch module or a checkpoint directory, got {type(model).__name__}")
    return model, getattr(model, "checkpoint_dir", None)
