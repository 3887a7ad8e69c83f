"""The on-disk index directory (format version 1): file names, manifest, checks, and the atomic save.

Layout::

    manifest.json       {"format": "deeprank-index", "version": 1, "dim", "count", "dtype": "float32",
                         "metric": "sqeuclidean", "model": {"config_hash", "config", "checkpoint"} or null,
                         "files": {name: {"bytes", "sha256"}}, "created", "deeprank_version"}
    embeddings.npy      float32 [count, dim], C order; row i is item i (loaded memory-mapped)
    keys.npy            optional int64 [count]: the backend key of row i, written only when the keys
                        are not 0 .. count - 1 (after removals); readers without it use row positions
    items.json          {"ids": [...], "paths": [...] or null}; ids str or int, unique; absolute paths
    approximate.faiss   optional FAISS index over the same rows (row i is item i)
    approximate.keys.npy  optional, like keys.npy, for approximate.faiss
    model/              optional copy of the checkpoint directory (then manifest.model.checkpoint = "model")

Every file but ``model/`` is listed in the manifest with its size and sha256
(:func:`deeprank.io.sha256_file`).
:func:`save_directory` writes the whole directory into a temporary sibling and swaps it in
(:func:`_swap_in`, the one place that replaces a saved index), so readers see the old or the new
index, never half of one. :func:`read_manifest` checks the format name and version, the fields, and
every listed file's size and (``verify=True``) checksum.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import DeeprankError, IndexFormatError
from ..io import sha256_file, write_json_atomic, write_text_atomic

__all__ = [
    "APPROXIMATE",
    "APPROXIMATE_KEYS",
    "EMBEDDINGS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ITEMS",
    "KEYS",
    "MANIFEST",
    "MODEL_DIR",
    "new_manifest",
    "read_items",
    "read_manifest",
    "save_directory",
    "write_items",
]

FORMAT_NAME = "deeprank-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
KEYS = "keys.npy"
ITEMS = "items.json"
APPROXIMATE = "approximate.faiss"
APPROXIMATE_KEYS = "approximate.keys.npy"
MODEL_DIR = "model"
REQUIRED = (EMBEDDINGS, ITEMS)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if hasattr(value, "__dict__"):
            return {k: _jsonable(v) for k, v in vars(value).items()}
        return str(value)


def new_manifest(
    dim: int, count: int, *, config_hash: str | None, config: Any, checkpoint: str | None
) -> dict[str, Any]:
    """A manifest for ``count`` vectors of dimension ``dim`` (:func:`save_directory` adds ``files``)."""
    from .. import __version__  # the package imports this module: read the version late

    model = None
    if config_hash is not None or checkpoint is not None:
        model = {"config_hash": config_hash, "config": _jsonable(config), "checkpoint": checkpoint}
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "dim": int(dim),
        "count": int(count),
        "dtype": "float32",
        "metric": "sqeuclidean",
        "model": model,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "deeprank_version": __version__,
    }


def write_items(directory: Path, ids: Sequence[Any], paths: Sequence[str | None]) -> str:
    """Write ``items.json``; returns its name."""
    items = {"ids": list(ids), "paths": list(paths) if any(p is not None for p in paths) else None}
    write_text_atomic(directory / ITEMS, json.dumps(items))
    return ITEMS


def read_items(root: Path) -> tuple[list[Any], list[str | None] | None]:
    """``(ids, paths or None)`` from ``items.json``."""
    try:
        items = json.loads((root / ITEMS).read_text(encoding="utf-8"))
        return items["ids"], items.get("paths")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise IndexFormatError(f"{root / ITEMS} is corrupt: {exc}") from None


def _check_target(target: Path, overwrite: bool) -> None:
    if not target.exists():
        return
    if not overwrite:
        raise DeeprankError(f"{target} already exists")
    if not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST).exists()):
        raise DeeprankError(f"{target} exists and is not a deeprank index; refusing to replace it")


def _swap_in(tmp: Path, target: Path) -> None:
    """Put the finished directory ``tmp`` at ``target``: the old index is renamed aside, the new one
    renamed in, then the old one deleted. The one place a saved index is replaced."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / "index")
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_directory(
    target: str | os.PathLike,
    manifest: dict[str, Any],
    fill: Callable[[Path], list[str]],
    *,
    overwrite: bool = True,
) -> Path:
    """Write an index directory at ``target`` atomically; returns its path.

    ``fill(tmp)`` writes the files into the temporary directory and returns the names to list (and
    checksum) in the manifest. An existing ``target`` is replaced only if it is a deeprank index (or
    empty); ``overwrite=False`` refuses any existing one.
    """
    target = Path(target)
    _check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        files = fill(tmp)
        manifest = dict(manifest)
        manifest["files"] = {
            f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in files
        }
        write_json_atomic(tmp / MANIFEST, manifest, indent=2)
        for f in [*files, MANIFEST]:
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _parse_manifest(root: Path) -> dict[str, Any]:
    if not root.exists():
        raise FileNotFoundError(f"index not found: {root}")
    if not (root / MANIFEST).is_file():
        raise IndexFormatError(f"{root} is not a deeprank index (no {MANIFEST})")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{root / MANIFEST} is corrupt: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{root / MANIFEST} is not a deeprank index manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{root} has index format version {manifest.get('version')}; "
            f"this deeprank reads version {FORMAT_VERSION}"
        )
    try:
        manifest["dim"], manifest["count"] = int(manifest["dim"]), int(manifest["count"])
        manifest["files"] = dict(manifest["files"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"{root / MANIFEST} lacks a valid field: {exc}") from None
    return manifest


def read_manifest(root: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """The checked manifest of the index directory ``root``.

    Raises ``FileNotFoundError`` (no such directory) or :class:`deeprank.errors.IndexFormatError`: no or
    corrupt manifest, another format or version, a missing field, a required or listed file missing,
    a size that differs from the manifest (truncated), or (``verify=True``) a checksum that differs.
    """
    root = Path(root)
    manifest = _parse_manifest(root)
    files = manifest["files"]
    for name in REQUIRED:
        if name not in files:
            raise IndexFormatError(f"{root / MANIFEST} does not list {name}")
    for name, facts in files.items():
        f = root / name
        if not f.is_file():
            raise IndexFormatError(f"{root} is missing {name}")
        size = f.stat().st_size
        if size != facts.get("bytes"):
            raise IndexFormatError(
                f"{f} has {size} bytes, the manifest says {facts.get('bytes')} (truncated?)"
            )
        if verify and sha256_file(f) != facts.get("sha256"):
            raise IndexFormatError(f"{f} does not match its checksum (corrupt or modified)")
    return manifest
