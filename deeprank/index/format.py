"""The on-disk index directory (format version 2): layout, manifest, checks, and the atomic save.

Layout::

    INDEX/
      current           the pointer: {"format": "deeprank-index", "version": 2, "directory": "v000007",
                        "manifest_sha256": ...}, compact JSON, replaced atomically (deeprank.io)
      v000007/          the index itself (one save), never changed once the pointer names it:
        manifest.json   {"format", "version": 2, "dim", "count", "dtype": "float32",
                         "metric": "sqeuclidean", "model": {"config_hash", "weights_hash", "config",
                         "checkpoint"} or null, "backends": {"exact": {"backend": "flat"},
                         "approximate": {"backend": NAME, ...} or null},
                         "files": {name: {"bytes", "sha256"}}, "created", "deeprank_version"}
        embeddings.npy  float32 [count, dim], C order; row i is item i (loaded memory-mapped)
        keys.npy        optional int64 [count]: the backend key of row i, when keys are not 0 .. count-1
        items.json      {"ids": [...], "paths": [...] or null}; ids str or int, unique; absolute paths
        approximate.*   optional files of the approximate backend the manifest names
        model/          optional copy of the model (model.safetensors and config.json only)
      v000006/          the version before, kept one save longer for readers that opened it
      .lock             held by a writer while it saves

Every byte is covered: the pointer's fields are all checked, it holds the manifest's sha256, and the
manifest lists every other file (``model/`` included) with its size and sha256.

:func:`save_directory` writes a new version folder next to the current one, flushes it, and then
replaces the pointer: that one ``rename`` is the commit. A reader sees the old index or the new one,
whole, and a writer killed at any step leaves the previous index loadable; the next save removes
what a killed one left (temporary folders, versions older than the previous one). :func:`read_index`
follows the pointer and retries when a save replaced it under the reader. Version 1 directories (the
files directly in ``INDEX/``) are still read, and a save over one turns it into version 2.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .._version import __version__
from ..errors import DeeprankError, IndexFormatError
from ..io import exclusive_lock, fsync_dir, fsync_tree, sha256_file, write_bytes_atomic, write_text_atomic

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
    "POINTER",
    "new_manifest",
    "read_index",
    "read_items",
    "read_manifest",
    "save_directory",
    "write_items",
]

FORMAT_NAME = "deeprank-index"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
POINTER = "current"
LOCK = ".lock"
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
KEYS = "keys.npy"
ITEMS = "items.json"
APPROXIMATE = "approximate.faiss"
APPROXIMATE_KEYS = "approximate.keys.npy"
MODEL_DIR = "model"
REQUIRED = (EMBEDDINGS, ITEMS)
_VERSION_DIR = re.compile(r"v(\d{6,})")
_TEMP = re.compile(r"\.(v\d{6,}\.\w+\.tmp|current\.\w+\.tmp)")  # a killed save's leftovers
_V1_FILES = (MANIFEST, EMBEDDINGS, KEYS, ITEMS, APPROXIMATE, APPROXIMATE_KEYS, MODEL_DIR)
_LOAD_TRIES = 100  # a retry happens only when a save committed meanwhile
T = TypeVar("T")


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if hasattr(value, "__dict__"):
            return {k: _jsonable(v) for k, v in vars(value).items()}
        return str(value)


def new_manifest(
    dim: int,
    count: int,
    *,
    config_hash: str | None,
    config: Any,
    checkpoint: str | None,
    weights_hash: str | None = None,
    approximate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A manifest for ``count`` vectors of dimension ``dim`` (:func:`save_directory` adds ``files``).

    ``approximate``: the manifest entry of the approximate backend (``{"backend": NAME, ...}``).
    """

    model = None
    if config_hash is not None or checkpoint is not None or weights_hash is not None:
        model = {
            "config_hash": config_hash,
            "weights_hash": weights_hash,
            "config": _jsonable(config),
            "checkpoint": checkpoint,
        }
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "dim": int(dim),
        "count": int(count),
        "dtype": "float32",
        "metric": "sqeuclidean",
        "model": model,
        "backends": {"exact": {"backend": "flat"}, "approximate": _jsonable(approximate)},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "deeprank_version": __version__,
    }


def write_items(directory: Path, ids: Sequence[Any], paths: Sequence[str | None]) -> str:
    """Write ``items.json``; returns its name."""
    items = {"ids": list(ids), "paths": list(paths) if any(p is not None for p in paths) else None}
    write_text_atomic(directory / ITEMS, json.dumps(items))
    return ITEMS


def read_items(root: Path) -> tuple[list[Any], list[str | None] | None]:
    """``(ids, paths or None)`` from ``items.json`` of a version folder."""
    try:
        items = json.loads((root / ITEMS).read_text(encoding="utf-8"))
        return items["ids"], items.get("paths")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise IndexFormatError(f"{root / ITEMS} is corrupt: {exc}") from None


# ---------------------------------------------------------------------------------------- saving


def _version_number(name: str) -> int | None:
    m = _VERSION_DIR.fullmatch(name)
    return int(m.group(1)) if m else None


def _ours(name: str) -> bool:
    """Whether ``name`` inside an index directory is something a save writes (never a user's file)."""
    return name in (POINTER, LOCK) or _version_number(name) is not None or bool(_TEMP.fullmatch(name))


def _check_target(target: Path, overwrite: bool) -> None:
    if not target.exists():
        return
    if not overwrite:
        raise DeeprankError(f"{target} already exists")
    if not target.is_dir():
        raise DeeprankError(f"{target} exists and is not a deeprank index; refusing to replace it")
    names = {p.name for p in target.iterdir()}
    # ours only (an index, or the leftovers of a killed first save), or a version 1 index (possibly
    # half replaced by a killed save: version 1 files beside a version 2 pointer)
    ours = all(_ours(n) or n in _V1_FILES for n in names)
    if not ours or (names & set(_V1_FILES) and not names & {MANIFEST, POINTER}):
        raise DeeprankError(f"{target} exists and is not a deeprank index; refusing to replace it")


def _pointer_bytes(directory: str, manifest_sha256: str) -> bytes:
    pointer = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "directory": directory,
        "manifest_sha256": manifest_sha256,
    }
    return json.dumps(pointer, separators=(",", ":")).encode()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _clean(target: Path, keep: set[str], *, version_1: bool = False) -> None:
    """Remove a killed save's leftovers and versions other than ``keep``; ``version_1``: also the
    files of a version 1 index (only once a version 2 pointer is committed over them)."""
    for p in target.iterdir():
        if p.name in keep or p.name in (POINTER, LOCK):
            continue
        leftover = _version_number(p.name) is not None or bool(_TEMP.fullmatch(p.name))
        if leftover or (version_1 and p.name in _V1_FILES):
            _remove(p)
    fsync_dir(target)


def save_directory(
    target: str | os.PathLike,
    manifest: dict[str, Any],
    fill: Callable[[Path], list[str]],
    *,
    overwrite: bool = True,
) -> Path:
    """Write a new version of the index directory ``target`` atomically; returns ``target``.

    ``fill(folder)`` writes the files into a fresh folder and returns the names (paths relative to
    the folder) to list and checksum in the manifest. An existing ``target`` is replaced only if it
    is a deeprank index (or empty); ``overwrite=False`` refuses any existing one.
    """
    target = Path(target)
    _check_target(target, overwrite)
    target.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target / LOCK):
        current = _current_directory(target)
        _clean(target, keep={current} if current else set(), version_1=current is not None)
        numbers = [n for n in map(_version_number, os.listdir(target)) if n is not None]
        name = f"v{max(numbers, default=0) + 1:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=target))
        try:
            files = fill(tmp)
            manifest = dict(manifest)
            manifest["files"] = {
                f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in files
            }
            text = (json.dumps(manifest, indent=2) + "\n").encode()
            write_bytes_atomic(tmp / MANIFEST, text)
            fsync_tree(tmp)
            os.rename(tmp, target / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(target)
        write_bytes_atomic(target / POINTER, _pointer_bytes(name, hashlib.sha256(text).hexdigest()))
        _clean(target, keep={name} | ({current} if current else set()), version_1=True)
    return target


def _current_directory(target: Path) -> str | None:
    """The version folder the pointer names (None without a valid pointer)."""
    try:
        return _parse_pointer(target, (target / POINTER).read_bytes())["directory"]
    except (OSError, IndexFormatError):
        return None


# ---------------------------------------------------------------------------------------- reading


def _json_document(root: Path, path: Path, data: bytes, what: str, version: int) -> dict[str, Any]:
    """``data`` parsed as a JSON object of this format (``what`` names it) and ``version``."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{path} is corrupt: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path} is not a deeprank index {what}")
    if doc.get("version") != version:
        raise IndexFormatError(
            f"{root} has index format version {doc.get('version')}; "
            f"this deeprank reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    return doc


def _parse_pointer(root: Path, data: bytes) -> dict[str, Any]:
    path = root / POINTER
    pointer = _json_document(root, path, data, "pointer", FORMAT_VERSION)
    directory, digest = pointer.get("directory"), pointer.get("manifest_sha256")
    if (
        set(pointer) != {"format", "version", "directory", "manifest_sha256"}
        or not isinstance(directory, str)
        or _version_number(directory) is None
        or not isinstance(digest, str)
        or not re.fullmatch(r"[0-9a-f]{64}", digest)
    ):
        raise IndexFormatError(f"{path} is corrupt (unexpected fields or values)")
    if data != _pointer_bytes(directory, digest):  # any other spelling of the same JSON is a change
        raise IndexFormatError(f"{path} is corrupt (not in the form deeprank writes)")
    return pointer


def _parse_manifest(root: Path, data: bytes, version: int) -> dict[str, Any]:
    path = root / MANIFEST
    manifest = _json_document(root, path, data, "manifest", version)
    try:
        manifest["dim"], manifest["count"] = int(manifest["dim"]), int(manifest["count"])
        manifest["files"] = dict(manifest["files"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"{path} lacks a valid field: {exc}") from None
    return manifest


def _locate(root: Path) -> tuple[Path, dict[str, Any]]:
    """``(version folder, parsed manifest)`` of the index at ``root``, the manifest checked against
    the pointer's checksum (version 2) or read as is (version 1)."""
    if not root.exists():
        raise FileNotFoundError(f"index not found: {root}")
    try:
        pointer_bytes = (root / POINTER).read_bytes()
    except FileNotFoundError:
        pointer_bytes = None
    except OSError as exc:
        raise IndexFormatError(f"{root / POINTER} cannot be read: {exc}") from None
    if pointer_bytes is None:  # version 1: the files directly in root
        if not (root / MANIFEST).is_file():
            raise IndexFormatError(f"{root} is not a deeprank index (no {POINTER} or {MANIFEST})")
        return root, _parse_manifest(root, (root / MANIFEST).read_bytes(), 1)
    pointer = _parse_pointer(root, pointer_bytes)
    folder = root / pointer["directory"]
    try:
        data = (folder / MANIFEST).read_bytes()
    except OSError:
        raise IndexFormatError(f"{root} is missing {pointer['directory']}/{MANIFEST}") from None
    if hashlib.sha256(data).hexdigest() != pointer["manifest_sha256"]:
        raise IndexFormatError(f"{folder / MANIFEST} does not match its checksum (corrupt or modified)")
    return folder, _parse_manifest(folder, data, FORMAT_VERSION)


def _check_files(folder: Path, manifest: dict[str, Any], verify: bool) -> None:
    files = manifest["files"]
    for name in REQUIRED:
        if name not in files:
            raise IndexFormatError(f"{folder / MANIFEST} does not list {name}")
    for name, facts in files.items():
        f = folder / name
        if not isinstance(facts, dict) or ".." in Path(name).parts or Path(name).is_absolute():
            raise IndexFormatError(f"{folder / MANIFEST} lists {name!r} oddly")
        if not f.is_file():
            raise IndexFormatError(f"{folder} is missing {name}")
        size = f.stat().st_size
        if size != facts.get("bytes"):
            raise IndexFormatError(
                f"{f} has {size} bytes, the manifest says {facts.get('bytes')} (truncated?)"
            )
        if verify and sha256_file(f) != facts.get("sha256"):
            raise IndexFormatError(f"{f} does not match its checksum (corrupt or modified)")


def _read_checked(root: Path, verify: bool) -> tuple[Path, dict[str, Any]]:
    folder, manifest = _locate(root)
    _check_files(folder, manifest, verify)
    return folder, manifest


def read_manifest(root: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """The checked manifest of the index directory ``root``.

    Raises ``FileNotFoundError`` (no such directory) or :class:`deeprank.errors.IndexFormatError`: a
    missing or corrupt pointer or manifest, another format or version, a missing field, a required or
    listed file missing, a size that differs from the manifest (truncated), or (``verify=True``) a
    checksum that differs. The manifest is always checked against its checksum.
    """
    return _read_checked(Path(root), verify)[1]


def _state(root: Path) -> bytes | None:
    """What a save changes: the pointer's bytes (None when there is none)."""
    try:
        return (root / POINTER).read_bytes()
    except OSError:
        return None


def read_index(
    root: str | os.PathLike, read: Callable[[Path, dict[str, Any]], T], *, verify: bool = True
) -> T:
    """``read(folder, manifest)`` on the checked index at ``root`` (see :func:`read_manifest`), with
    ``folder`` the version folder holding its files.

    A save that replaces the index while it is read (and removes the version being read) makes the
    read fail; when the pointer changed meanwhile, the read starts again on the new version.
    """
    root = Path(root)
    for attempt in range(_LOAD_TRIES):
        before = _state(root)
        try:
            return read(*_read_checked(root, verify))
        except (IndexFormatError, OSError):
            if attempt == _LOAD_TRIES - 1 or _state(root) == before:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
