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

Folders written as a whole (an export, an index version) are built in a temporary folder, flushed
with :func:`fsync_tree`, and put in place with :func:`replace_directory` (an atomic exchange where
the system has one). :func:`exclusive_lock` keeps two writers of one target apart.

:func:`sha256_file` is the one checksum every manifest uses.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "exchange_paths",
    "exclusive_lock",
    "fsync_dir",
    "fsync_tree",
    "replace_directory",
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


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file and folder under ``folder`` (and ``folder`` itself) to disk."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            _fsync_file(os.path.join(root, name))
        for name in dirs:
            fsync_dir(os.path.join(root, name))
    fsync_dir(folder)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _renameat2() -> ctypes._CFuncPtr | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.renameat2
    except (OSError, AttributeError):  # no glibc 2.28+ (musl, old systems)
        return None


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, changing nothing, where the system or file system cannot exchange; other
    failures raise ``OSError``.
    """
    fn = _renameat2()
    if fn is None:
        return False
    at_cwd = -100  # AT_FDCWD
    if fn(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, os.strerror(err), str(a))


def replace_directory(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder ``tmp`` at ``target`` (same parent folder), replacing what is there.

    Where paths can be exchanged atomically, ``target`` always holds the old folder or the new one,
    whole; the old one ends up at ``tmp`` and is deleted. Elsewhere the old folder is renamed aside
    first, so a kill between the two renames leaves it only at the hidden ``TARGET.old`` name.
    """
    tmp, target = Path(tmp), Path(target)
    if not target.exists():
        os.rename(tmp, target)
    elif exchange_paths(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        aside = tmp.with_name(tmp.name + ".old")
        os.rename(target, aside)
        os.rename(tmp, target)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(target.parent)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` (created if missing) for a ``with`` block.

    Two deeprank writers of one target wait for each other instead of interleaving; readers never
    take it. A no-op where ``fcntl`` is missing (Windows).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
