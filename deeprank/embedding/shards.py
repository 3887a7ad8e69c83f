"""A sharded embedding run: a folder of shards written as they finish, resumable, opened by ``Index``.

For collections too large to embed in one go (or on one machine): the sorted file list is cut into
shards of ``shard_size`` files; each shard's embeddings are written as soon as it is done, so a
killed run loses at most the shards in flight, and a rerun skips the finished ones.
:func:`deeprank.embedding.sharded_run.embed_to_shards` runs it in this process (``engine="local"``,
decoding in worker processes) or on a Ray cluster (``engine="ray"``, :mod:`deeprank.embedding.ray_engine`);
both write the same files, through :class:`ShardWriter` (this module: the format, its writer and
reader). ``deeprank.Index.load(folder)`` searches the shards in place
(:mod:`deeprank.index.shards`), without copying them into one array.

Layout (format ``deeprank-shards``, version 1)::

    manifest.json     {"format", "version", "dim", "model": {"config_hash", "config", "checkpoint"},
                       "root": the image folder, "count": files planned, "files_sha256": hash of the
                       planned file list, "shard_size", "shards": number of shards, "complete": bool,
                       "embedded" / "skipped" counts once complete, "created", "deeprank_version"}
    shard-00000.npy   float32 [readable files of shard 0, dim], in file order
    shard-00000.json  {"shard", "first": position of its first file, "files": files in the shard,
                       "ids": paths relative to root, "paths": absolute paths, "skipped": [[path, reason]],
                       "embeddings": {"bytes", "sha256"}}

A shard's ``.npy`` is written before its ``.json`` (each atomically, :mod:`deeprank.io`): the
``.json`` is the mark that the shard is done, and it holds the ``.npy``'s size and checksum.
``manifest.json`` is written when the run starts (``complete: false``) and again at the end.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import DeeprankError, IndexFormatError
from ..io import atomic_path, sha256_file, write_json_atomic
from ..models.checkpoint import config_hash
from .embed import model_geometry

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ShardRun",
    "ShardSet",
    "ShardWriter",
    "is_shard_set",
    "read_shard_set",
]

FORMAT_NAME = "deeprank-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_SIZE = 16384


def shard_name(i: int) -> str:
    """The file stem of shard ``i`` (``shard-00000``)."""
    return f"shard-{i:05d}"


def _files_hash(ids: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for i in ids:
        digest.update(i.encode("utf-8") + b"\n")
    return digest.hexdigest()


def _model_block(model: torch.nn.Module, checkpoint: Path | None) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "config_hash": None if config is None else config_hash(config),
        "config": json.loads(json.dumps(config, default=str)) if config is not None else None,
        "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{path} is unreadable or corrupt: {exc}") from None


def is_shard_set(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a sharded embedding run (its manifest names this format)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


@dataclass
class ShardRun:
    """What :func:`embed_to_shards` did: shards written now, shards already done before, the totals."""

    output: Path
    dim: int
    shards: int
    written: int
    resumed: int
    embedded: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


class ShardWriter:
    """Plans a run over ``files`` (under ``root``) and writes its shards; shared by every engine.

    Creating it writes (or, for a rerun, checks) ``manifest.json``: a folder holding a run of other
    files, another model or another shard size is refused rather than mixed. :attr:`pending` lists
    the shards still to write.
    """

    def __init__(
        self,
        output: str | os.PathLike,
        root: Path,
        files: Sequence[Path],
        model: torch.nn.Module,
        checkpoint: Path | None,
        shard_size: int,
    ) -> None:
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
        self.output, self.root, self.files, self.shard_size = Path(output), root, list(files), shard_size
        self.ids = [f.relative_to(root).as_posix() for f in self.files]
        self.dim = model_geometry(model)[2]
        self.shards = -(-len(self.files) // shard_size)
        self.manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "dim": self.dim,
            "model": _model_block(model, checkpoint),
            "root": str(root),
            "count": len(self.files),
            "files_sha256": _files_hash(self.ids),
            "shard_size": shard_size,
            "shards": self.shards,
            "complete": False,
        }
        self._start_or_resume()
        self.pending = [i for i in range(self.shards) if not self._done(i)]

    def _start_or_resume(self) -> None:
        path = self.output / MANIFEST
        if path.is_file():
            old = _read_json(path)
            same = ("format", "version", "dim", "count", "files_sha256", "shard_size")
            differs = [k for k in same if old.get(k) != self.manifest[k]]
            if (old.get("model") or {}).get("config_hash") != self.manifest["model"]["config_hash"]:
                differs.append("model")
            if differs:
                raise DeeprankError(
                    f"{self.output} holds an embedding run that differs in {', '.join(differs)}; "
                    "resume it with the same files, model and shard size, or write to a new folder"
                )
            for leftover in self.output.glob(".shard-*.tmp"):  # a killed run's half-written file
                leftover.unlink(missing_ok=True)
            return
        if self.output.exists() and (not self.output.is_dir() or any(self.output.iterdir())):
            raise DeeprankError(
                f"{self.output} exists and is not an embedding run; refusing to write into it"
            )
        self._write_manifest()

    def _write_manifest(self) -> None:

        created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        write_json_atomic(
            self.output / MANIFEST, {**self.manifest, "created": created, "deeprank_version": __version__}
        )

    def shard_files(self, i: int) -> list[Path]:
        """The files of shard ``i``, in order."""
        return self.files[i * self.shard_size : (i + 1) * self.shard_size]

    def _done(self, i: int) -> bool:
        """Shard ``i`` has its ``.json`` for this plan and a ``.npy`` of the size it records."""
        meta_path = self.output / f"{shard_name(i)}.json"
        if not meta_path.is_file():
            return False
        try:
            meta = _read_json(meta_path)
            facts = meta["embeddings"]
            first_ok = meta["shard"] == i and meta["first"] == i * self.shard_size
            npy = self.output / f"{shard_name(i)}.npy"
            return first_ok and npy.is_file() and npy.stat().st_size == facts["bytes"]
        except (IndexFormatError, KeyError, TypeError):
            return False  # a damaged mark: the shard is written again

    def write(
        self, i: int, embeddings: np.ndarray, kept: Sequence[int], skipped: Sequence[tuple[str, str]]
    ) -> None:
        """Write shard ``i``: ``embeddings`` of its files at positions ``kept`` (within the shard)."""
        files = self.shard_files(i)
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.shape != (len(kept), self.dim) or len(kept) + len(skipped) != len(files):
            raise ValueError(
                f"shard {i}: {embeddings.shape} embeddings, {len(kept)} kept and {len(skipped)} skipped "
                f"for {len(files)} files"
            )
        npy = self.output / f"{shard_name(i)}.npy"
        with atomic_path(npy) as tmp, open(tmp, "wb") as fh:
            np.save(fh, embeddings, allow_pickle=False)
        first = i * self.shard_size
        meta = {
            "shard": i,
            "first": first,
            "files": len(files),
            "ids": [self.ids[first + j] for j in kept],
            "paths": [str(files[j]) for j in kept],
            "skipped": [list(s) for s in skipped],
            "embeddings": {"bytes": npy.stat().st_size, "sha256": sha256_file(npy)},
        }
        write_json_atomic(self.output / f"{shard_name(i)}.json", meta, indent=None)

    def finish(self) -> tuple[int, list[tuple[str, str]]]:
        """Check every shard is done, mark the run complete; returns ``(embedded, skipped)``."""
        shard_set = read_shard_set(self.output, verify=False, require_complete=False)
        embedded = sum(len(m["ids"]) for m in shard_set.metas)
        self.manifest.update(complete=True, embedded=embedded, skipped=len(shard_set.skipped))
        self._write_manifest()
        return embedded, shard_set.skipped


@dataclass
class ShardSet:
    """A checked run folder: its manifest, and per non-empty shard its ``.npy`` path and metadata."""

    root: Path
    manifest: dict[str, Any]
    arrays: list[Path]
    metas: list[dict[str, Any]]
    skipped: list[tuple[str, str]]


def read_shard_set(
    root: str | os.PathLike, *, verify: bool = True, require_complete: bool = True
) -> ShardSet:
    """The checked shards of a run folder (``verify``: also their sha256).

    Raises :class:`deeprank.errors.IndexFormatError` for another format or version, a run that is not
    complete (it names how many shards are missing), or a shard file that is missing, truncated or
    (``verify``) does not match its checksum.
    """
    root = Path(root)
    manifest = _read_json(root / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{root / MANIFEST} is not a deeprank embedding run manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{root} has embedding run format version {manifest.get('version')}; this deeprank reads "
            f"version {FORMAT_VERSION}"
        )
    arrays, metas, skipped, missing = [], [], [], []
    for i in range(int(manifest["shards"])):
        meta_path = root / f"{shard_name(i)}.json"
        if not meta_path.is_file():
            missing.append(i)
            continue
        meta = _read_json(meta_path)
        npy = root / f"{shard_name(i)}.npy"
        facts = meta.get("embeddings", {})
        if not npy.is_file() or npy.stat().st_size != facts.get("bytes"):
            raise IndexFormatError(
                f"{npy} is missing or truncated (its manifest says {facts.get('bytes')} bytes)"
            )
        if verify and sha256_file(npy) != facts.get("sha256"):
            raise IndexFormatError(f"{npy} does not match its checksum (corrupt or modified)")
        skipped += [(str(s), str(r)) for s, r in meta["skipped"]]
        if meta["ids"]:
            arrays.append(npy)
            metas.append(meta)
    if missing and require_complete:
        raise IndexFormatError(
            f"{root} is an unfinished embedding run: {len(missing)} of {manifest['shards']} shards missing "
            f"(first: {shard_name(missing[0])}); run the same embed command again to finish it"
        )
    return ShardSet(root, manifest, arrays, metas, skipped)
