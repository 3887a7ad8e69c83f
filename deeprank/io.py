"""The one way deeprank writes files: atomically, so a reader sees the old file or the new one, whole.

Every writer in the package (checkpoints, training state, index files, results, figures, exports,
benchmark JSON) goes through :func:`atomic_path` or one of the helpers built on it:

1. the content goes to a temporary file in the target's own folder (same file system, so the final
   rename is atomic);
2. the temporary file is flushed and ``fsync``-ed;
3. ``os.replace`` moves it over the target, and the folder is ``fsync``-ed so the rename itself
   survives a power cut.

An exception (or a kill) before step 3 leaves the target untouched; the temporary file is removed on
an exception, and a kill leaves only a hidden ``.NAME.*.tmp`` file next to it.

:func:`sha256_file` is the one checksum every manifest uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "fsync_dir",
    "sha256_file",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on success it replaces ``path``.

    For writers that want a file name (``np.save``, ``PIL.Image.save``, ``faiss.write_index``)::

        with atomic_path("out/embeddings.npy") as tmp:
            np.save(tmp, array)

    The parent folder is created if missing.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: Any, *, indent: int | None = 2, **dumps: Any) -> Path:
    """Write ``payload`` as JSON (a trailing newline) to ``path`` atomically; returns the path.

    ``dumps`` go to :func:`json.dumps` (e.g. ``default=str``, ``sort_keys=True``).
    """
    return write_text_atomic(path, json.dumps(payload, indent=indent, **dumps) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 4 MiB blocks (memory stays flat for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
