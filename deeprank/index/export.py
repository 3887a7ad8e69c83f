"""Exports for other engines: a folder (``embeddings.npy`` or ``index.faiss``, plus ``metadata.json``)
written as a whole, so a reader or a killed writer never leaves a mix of two exports.

The new folder is built beside the target (a hidden ``.NAME.XXXX.tmp``), flushed, and put in place
with :func:`deeprank.io.replace_directory` (one atomic exchange on Linux). ``metadata.json`` lists
every other file with its size and sha256. The next export removes a killed one's temporary folder.
A target that holds anything but an earlier export is refused.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DeeprankError
from ..io import fsync_tree, replace_directory, sha256_file, write_json_atomic

__all__ = ["EXPORT_FILES", "METADATA", "write_export"]

METADATA = "metadata.json"
EXPORT_FILES = ("embeddings.npy", "index.faiss", METADATA)


def _check_target(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir() or any(p.name not in EXPORT_FILES for p in target.iterdir()):
        raise DeeprankError(
            f"{target} exists and is not a deeprank export (it holds other files); "
            "export into a new or empty folder"
        )


def _clean_stale(target: Path) -> None:
    stale = re.compile(re.escape(f".{target.name}.") + r"\w{8}\.tmp(\.old)?")
    for p in target.parent.iterdir():
        if stale.fullmatch(p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def write_export(
    target: str | Path, metadata: dict[str, Any], fill: Callable[[Path], list[Path]]
) -> list[Path]:
    """Write an export folder at ``target``: ``fill(folder)`` writes the data files into a fresh
    folder and returns them; ``metadata`` (plus ``files``) goes to ``metadata.json``. Returns the
    files at their final paths."""
    target = Path(target)
    _check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        written = fill(tmp)
        files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in written}
        written.append(write_json_atomic(tmp / METADATA, {**metadata, "files": files}, indent=None))
        fsync_tree(tmp)
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [target / p.name for p in written]
