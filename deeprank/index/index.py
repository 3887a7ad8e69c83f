"""``Index``: embeddings of an image collection with ids, exact (and optional approximate) search, storage.

Build one from a trained model and an image folder, or from vectors plus ids::

    index = Index.build(model_or_checkpoint_dir, "photos/")        # recursive, batched, progress bar
    index = Index.from_vectors(vectors, ids=["a", "b", ...])
    result = index.search("query.jpg", k=10)                        # path, PIL image, images, vectors
    for hit in result.hits(0):
        print(hit["rank"], hit["id"], hit["path"], hit["distance"])
    index.save("photos.index"); index = Index.load("photos.index")

Distances are the paper's squared Euclidean ``||f(q) - f(x)||^2``, ascending, ties by row order; exact
search goes through :func:`deeprank.topk`.

On-disk format (a directory, format version 1):

- ``manifest.json``: ``{"format": "deeprank-index", "version": 1, "dim", "count", "dtype": "float32",
  "metric": "sqeuclidean", "model": {"config_hash", "config", "checkpoint"} or null,
  "files": {name: {"bytes", "sha256"}}, "created", "deeprank_version"}``.
- ``embeddings.npy``: float32 ``[count, dim]``, C order; loaded with ``mmap_mode="r"``.
- ``items.json``: ``{"ids": [...], "paths": [...] or null}``; ids are strings or ints, unique; paths
  are absolute image paths (or null for items added as vectors).
- ``model/``: optional copy of the checkpoint directory (``save(..., include_model=True)``); otherwise
  ``manifest["model"]["checkpoint"]`` records where the checkpoint was.
- ``approximate.faiss``: optional FAISS index (``build_approximate``) over the same rows.

A save writes everything into a temporary directory next to the target, fsyncs, and swaps it in with
renames, so readers see the old or the new index, never a half-written one. ``load`` checks the format
version, file sizes, the ``.npy`` header (dtype, shape), sha256 checksums (``verify=True``, the
default; skip for very large files) and, given a model, its config hash and dimension.

Stable API for other layers (``deeprank serve``): ``Index.load``, ``Index.search`` (path, PIL image,
vector(s)), ``SearchResult.hits``, ``Index.path_of``, ``Index.ids``, ``len(index)``, ``Index.dim``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..embedding.embed import embed_folder, embed_images, embed_tensor, list_folder
from ..errors import DeeprankError, IndexFormatError, ModelMismatchError
from ..io import atomic_path, sha256_file, write_json_atomic
from ..models.checkpoint import config_hash, resolve_model
from ..ops.topk import topk
from .faiss_index import ApproximateIndex, recall_against_exact, write_flat_faiss
from .results import SearchResult

__all__ = ["Index"]

FORMAT_NAME = "deeprank-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
ITEMS = "items.json"
APPROXIMATE = "approximate.faiss"
MODEL_DIR = "model"


def _model_hash(model: Any) -> tuple[str | None, Any]:
    config = getattr(model, "config", None)
    if config is None:
        return None, None
    return config_hash(config), config


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if hasattr(value, "__dict__"):
            return {k: _jsonable(v) for k, v in vars(value).items()}
        return str(value)


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")


def _is_image_like(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike)) or type(x).__module__.startswith("PIL.")


class Index:
    """Embeddings plus ids (and image paths), searchable by image or by vector. See the module docstring."""

    def __init__(
        self,
        embeddings: Any,
        ids: Sequence[Any] | None = None,
        paths: Sequence[str | os.PathLike | None] | None = None,
        *,
        model: torch.nn.Module | None = None,
        checkpoint: str | os.PathLike | None = None,
        model_hash: str | None = None,
    ) -> None:
        emb = embeddings.detach().cpu().numpy() if isinstance(embeddings, torch.Tensor) else embeddings
        if not isinstance(emb, np.memmap):
            emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[1] < 1:
            raise ValueError(f"embeddings must be a 2-D array [n, d], got shape {emb.shape}")
        if emb.dtype != np.float32 or not emb.flags.c_contiguous:
            emb = np.ascontiguousarray(emb, dtype=np.float32)
        n = emb.shape[0]
        ids = list(range(n)) if ids is None else [i.item() if isinstance(i, np.generic) else i for i in ids]
        if len(ids) != n:
            raise ValueError(f"got {len(ids)} ids for {n} embeddings")
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, str)):
                raise TypeError(f"ids must be str or int, got {type(i).__name__}")
        if len(set(ids)) != n:
            raise ValueError("ids must be unique")
        if paths is not None and len(paths) != n:
            raise ValueError(f"got {len(paths)} paths for {n} embeddings")
        self._emb = emb
        self._ids: list[Any] = ids
        self._paths: list[str | None] = (
            [None] * n if paths is None else [None if p is None else str(p) for p in paths]
        )
        self._pos: dict[Any, int] | None = None
        self._norms: np.ndarray | None = None
        self._model = model
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.model_hash = model_hash if model_hash is not None else _model_hash(model)[0]
        self.model_config = _model_hash(model)[1] if model is not None else None
        self.skipped: list[tuple[str, str]] = []
        self._ann: Any = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_vectors(
        cls, vectors: Any, ids: Sequence[Any] | None = None, paths: Sequence[Any] | None = None
    ) -> Index:
        """An index over given embedding vectors ``[n, d]`` (ids default to ``0..n-1``)."""
        index = cls(vectors, ids, paths)
        _check_finite(index._emb, "vectors")
        return index

    @classmethod
    def build(
        cls,
        model: torch.nn.Module | str | os.PathLike,
        folder: str | os.PathLike,
        *,
        recursive: bool = True,
        batch_size: int = 256,
        progress: bool = True,
    ) -> Index:
        """Embed every image under ``folder`` with ``model`` (a model or a checkpoint directory).

        Ids are the image paths relative to ``folder`` (``/``-separated); files that cannot be read
        are skipped and listed in ``index.skipped`` as ``(path, reason)``.
        """
        model, checkpoint = resolve_model(model)
        root = Path(folder)
        emb, files, skipped = embed_folder(
            model, root, recursive=recursive, batch_size=batch_size, progress=progress
        )
        ids = [f.relative_to(root).as_posix() for f in files]
        index = cls(emb, ids, [str(f.resolve()) for f in files], model=model, checkpoint=checkpoint)
        index.skipped = skipped
        return index

    # ------------------------------------------------------------------ basic facts

    def __len__(self) -> int:
        return self._emb.shape[0]

    def __repr__(self) -> str:
        return f"Index(count={len(self)}, dim={self.dim}, model_hash={self.model_hash!r})"

    @property
    def dim(self) -> int:
        return int(self._emb.shape[1])

    @property
    def embeddings(self) -> np.ndarray:
        """float32 ``[count, dim]`` (read-only memory map after ``load``)."""
        return self._emb

    @property
    def ids(self) -> list[Any]:
        return list(self._ids)

    @property
    def paths(self) -> list[str | None]:
        return list(self._paths)

    def position(self, item_id: Any) -> int:
        """Row of ``item_id`` (``KeyError`` if absent)."""
        if self._pos is None:
            self._pos = {i: r for r, i in enumerate(self._ids)}
        return self._pos[item_id]

    def path_of(self, item_id: Any) -> str | None:
        """Absolute image path of an item (None for items added as vectors)."""
        return self._paths[self.position(item_id)]

    def vector(self, item_id: Any) -> np.ndarray:
        """The stored embedding of one item."""
        return np.array(self._emb[self.position(item_id)])

    @property
    def model(self) -> torch.nn.Module:
        """The model that embeds queries: the one given, else the checkpoint recorded at build time."""
        if self._model is None:
            if self.checkpoint is None:
                raise DeeprankError(
                    "this index has no model: searching by image needs one (load the index with model=...)"
                )
            if not Path(self.checkpoint).is_dir():
                raise DeeprankError(
                    f"the index's model checkpoint {self.checkpoint} is missing; pass the model explicitly"
                )
            model, _ = resolve_model(self.checkpoint)
            self._check_model(model)
            self._model = model
        return self._model

    def _check_model(self, model: torch.nn.Module) -> None:
        dim = getattr(model, "embedding_dim", None)
        if dim is not None and int(dim) != self.dim:
            raise ModelMismatchError(f"the model embeds into {dim} dimensions but the index holds {self.dim}")
        h, _ = _model_hash(model)
        if self.model_hash is not None and h is not None and h != self.model_hash:
            raise ModelMismatchError(
                f"the model (config hash {h[:12]}) is not the one this index was built with "
                f"({self.model_hash[:12]})"
            )

    # ------------------------------------------------------------------ changes

    def add(
        self, items: Any, ids: Sequence[Any] | None = None, paths: Sequence[Any] | None = None
    ) -> list[tuple[str, str]]:
        """Add vectors ``[n, d]`` or images (paths / PIL images, embedded with the index's model).

        Ids default to the image paths, or to consecutive integers after the largest int id for
        vectors. Returns the ``(source, reason)`` list of images that could not be read (not added).
        """
        skipped: list[tuple[str, str]] = []
        if _is_image_like(items) or (isinstance(items, (list, tuple)) and items and _is_image_like(items[0])):
            sources = [items] if _is_image_like(items) else list(items)
            res = embed_images(self.model, sources, progress=False)
            skipped = res.skipped
            file_like = [isinstance(s, (str, os.PathLike)) for s in sources]
            if ids is None:
                if not all(file_like):
                    raise ValueError("ids are required when adding PIL images")
                ids = [str(s) for s in sources]
            if len(ids) != len(sources):
                raise ValueError(f"got {len(ids)} ids for {len(sources)} images")
            if paths is None:
                paths = [
                    str(Path(s).resolve()) if f else None for s, f in zip(sources, file_like, strict=True)
                ]
            vectors = res.embeddings
            ids = [ids[i] for i in res.kept]
            paths = [paths[i] for i in res.kept]
        else:
            vectors = items.detach().cpu().numpy() if isinstance(items, torch.Tensor) else np.asarray(items)
            if vectors.ndim == 1:
                vectors = vectors[None, :]
            if vectors.ndim != 2 or vectors.shape[1] != self.dim:
                raise ValueError(f"vectors must have shape [n, {self.dim}], got {vectors.shape}")
            if ids is None:
                ints = [i for i in self._ids if isinstance(i, int)]
                first = max(ints) + 1 if ints else 0
                ids = list(range(first, first + vectors.shape[0]))
        if len(ids) != vectors.shape[0]:
            raise ValueError(f"got {len(ids)} ids for {vectors.shape[0]} vectors")
        clash = set(ids) & set(self._ids)
        if clash:
            raise ValueError(f"ids already in the index: {sorted(map(str, clash))[:5]}")
        new = Index(vectors, ids, paths)  # validates ids and vectors
        _check_finite(new._emb, "vectors")
        self._emb = np.concatenate([np.asarray(self._emb), new._emb])
        self._ids = self._ids + new._ids
        self._paths = self._paths + new._paths
        self._changed()
        return skipped

    def remove(self, ids: Iterable[Any]) -> int:
        """Remove items by id; unknown ids raise ``KeyError``. Returns the number removed."""
        ids = list(ids)
        present = set(self._ids)
        missing = [i for i in ids if i not in present]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        drop = {self.position(i) for i in ids}
        keep = np.setdiff1d(np.arange(len(self)), np.fromiter(drop, dtype=np.int64, count=len(drop)))
        self._emb = np.ascontiguousarray(np.asarray(self._emb)[keep])
        self._ids = [self._ids[r] for r in keep]
        self._paths = [self._paths[r] for r in keep]
        self._changed()
        return len(drop)

    def _changed(self) -> None:
        self._pos = None
        self._norms = None
        self._ann = None  # an approximate index over old rows would be wrong

    # ------------------------------------------------------------------ search

    def query_vectors(self, query: Any) -> np.ndarray:
        """Embeddings ``[M, d]`` for any accepted query form (see :meth:`search`)."""
        if isinstance(query, Index):
            if query.dim != self.dim:
                raise ModelMismatchError(f"query index has dimension {query.dim}, this index {self.dim}")
            if query.model_hash and self.model_hash and query.model_hash != self.model_hash:
                raise ModelMismatchError("the query index was built with a different model than this index")
            return np.asarray(query.embeddings)
        if isinstance(query, (str, os.PathLike)) and Path(query).is_dir():
            query = list_folder(query)
        if _is_image_like(query) or (isinstance(query, (list, tuple)) and query and _is_image_like(query[0])):
            sources = [query] if _is_image_like(query) else list(query)
            res = embed_images(self.model, sources, skip_unreadable=False)
            return res.embeddings
        arr = query.detach().cpu().numpy() if isinstance(query, torch.Tensor) else np.asarray(query)
        if arr.ndim == 1 and arr.shape[0] == self.dim:
            arr = arr[None, :]
        if arr.ndim == 2 and arr.shape[1] == self.dim and arr.dtype.kind == "f":
            return np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim in (3, 4):
            return embed_tensor(self.model, torch.from_numpy(np.array(arr, copy=True)))
        raise ValueError(
            f"cannot search with an array of shape {tuple(arr.shape)}: expected vectors [M, {self.dim}] "
            "or images [N, C, H, W]"
        )

    def search(
        self, query: Any, k: int = 10, *, approximate: bool = False, threads: int | None = None
    ) -> SearchResult:
        """The ``k`` nearest items of each query.

        ``query`` may be an image path, a folder of images, a PIL image, a list of paths/PIL images, an
        image array ``[N, C, H, W]`` / ``[C, H, W]`` (floats in [0, 1] or uint8), embedding vectors
        ``[M, d]`` or ``[d]``, or another :class:`Index` (a query set against this reference set).
        Images need a model (given, or the index's checkpoint). ``approximate=True`` uses the FAISS
        index from :meth:`build_approximate`.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if k > len(self):
            raise ValueError(f"k={k} is larger than the index ({len(self)} items)")
        q = self.query_vectors(query)
        if approximate:
            if self._ann is None:
                raise DeeprankError("no approximate index: call build_approximate() first")
            dist, idx = self._ann.search(q, int(k))
        else:
            if self._norms is None:
                e = np.asarray(self._emb)
                self._norms = np.einsum("ij,ij->i", e, e, dtype=np.float32)
            dist, idx = topk(q, self._emb, int(k), database_norms=self._norms, threads=threads)
        dist = np.asarray(dist, dtype=np.float32)
        idx = np.asarray(idx, dtype=np.int64)
        ids = [[self._ids[j] if j >= 0 else None for j in row] for row in idx.tolist()]
        paths = [[self._paths[j] if j >= 0 else None for j in row] for row in idx.tolist()]
        return SearchResult(dist, idx, ids, paths)

    # ------------------------------------------------------------------ approximate search

    def build_approximate(
        self, kind: str = "hnsw", *, recall_queries: int = 1000, k: int = 10, **options: Any
    ) -> dict:
        """Build a FAISS index (``"hnsw"`` or ``"ivfpq"``) for ``search(approximate=True)``.

        Returns a report with the build time and recall@k against exact search on up to
        ``recall_queries`` items of the index used as queries. Needs ``faiss`` (extra ``deeprank[faiss]``).
        """
        ann = ApproximateIndex.build(np.asarray(self._emb), kind, **options)
        self._ann = ann
        report = dict(ann.info)
        report.update(recall_against_exact(self, ann, queries=recall_queries, k=k))
        return report

    @property
    def approximate_index(self) -> Any:
        """The FAISS-backed :class:`deeprank.approximate.ApproximateIndex`, or None."""
        return self._ann

    # ------------------------------------------------------------------ storage

    def manifest(self) -> dict[str, Any]:
        model = None
        if self.model_hash is not None or self.checkpoint is not None:
            model = {
                "config_hash": self.model_hash,
                "config": _jsonable(self.model_config),
                "checkpoint": None if self.checkpoint is None else str(Path(self.checkpoint).resolve()),
            }
        from .. import __version__

        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "dim": self.dim,
            "count": len(self),
            "dtype": "float32",
            "metric": "sqeuclidean",
            "model": model,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "deeprank_version": __version__,
        }

    def save(self, path: str | os.PathLike, *, include_model: bool = False, overwrite: bool = True) -> Path:
        """Write the index directory atomically (see the module docstring); returns its path.

        ``include_model`` copies the checkpoint directory into ``model/`` so the index is self-contained.
        An existing directory is replaced only if it is a deeprank index (never a folder of other files).
        """
        target = Path(path)
        if target.exists():
            if not overwrite:
                raise DeeprankError(f"{target} already exists")
            if not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST).exists()):
                raise DeeprankError(f"{target} exists and is not a deeprank index; refusing to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            manifest = self.manifest()
            np.save(tmp / EMBEDDINGS, np.ascontiguousarray(self._emb, dtype=np.float32), allow_pickle=False)
            items = {
                "ids": self._ids,
                "paths": self._paths if any(p is not None for p in self._paths) else None,
            }
            (tmp / ITEMS).write_text(json.dumps(items), encoding="utf-8")
            files = [EMBEDDINGS, ITEMS]
            if self._ann is not None:
                self._ann.save(tmp / APPROXIMATE)
                files.append(APPROXIMATE)
            if include_model:
                if self.checkpoint is None or not Path(self.checkpoint).is_dir():
                    raise DeeprankError(
                        "include_model needs the index's checkpoint directory, which is unknown"
                    )
                shutil.copytree(self.checkpoint, tmp / MODEL_DIR)
                manifest["model"]["checkpoint"] = MODEL_DIR
            manifest["files"] = {
                f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in files
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            for f in [*files, MANIFEST]:
                with open(tmp / f, "rb") as fh:
                    os.fsync(fh.fileno())
            old = None
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
                os.replace(target, old / "index")
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: torch.nn.Module | str | os.PathLike | None = None,
        *,
        verify: bool = True,
        mmap: bool = True,
    ) -> Index:
        """Open an index directory, checking it (see the module docstring).

        ``model`` (a model or checkpoint directory) is checked against the manifest's config hash and
        dimension; without it, image queries load the checkpoint the index records. ``verify=False``
        skips the sha256 checksums (sizes and headers are always checked). Raises
        :class:`deeprank.errors.IndexFormatError` or :class:`deeprank.errors.ModelMismatchError`.
        """
        root = Path(path)
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
            dim, count, files = int(manifest["dim"]), int(manifest["count"]), dict(manifest["files"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{root / MANIFEST} lacks a valid field: {exc}") from None
        for name in (EMBEDDINGS, ITEMS):
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
        try:
            emb = np.load(root / EMBEDDINGS, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise IndexFormatError(f"{root / EMBEDDINGS} is not a readable .npy file: {exc}") from None
        if emb.dtype != np.float32 or emb.shape != (count, dim):
            raise IndexFormatError(
                f"{root / EMBEDDINGS} holds {emb.dtype} {emb.shape}; "
                f"the manifest says float32 ({count}, {dim})"
            )
        try:
            items = json.loads((root / ITEMS).read_text(encoding="utf-8"))
            ids, paths = items["ids"], items.get("paths")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"{root / ITEMS} is corrupt: {exc}") from None
        info = manifest.get("model") or {}
        checkpoint = info.get("checkpoint")
        if checkpoint is not None and not Path(checkpoint).is_absolute():
            checkpoint = root / checkpoint
        try:
            index = cls(emb, ids, paths, checkpoint=checkpoint, model_hash=info.get("config_hash"))
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{root / ITEMS} does not match the embeddings: {exc}") from None
        index.model_config = info.get("config")
        if model is not None:
            resolved, ckpt = resolve_model(model)
            index._check_model(resolved)
            index._model = resolved
            index.checkpoint = ckpt or index.checkpoint
        if APPROXIMATE in files:
            index._ann = ApproximateIndex.load(root / APPROXIMATE)
        return index

    def export(self, path: str | os.PathLike, format: str = "npy") -> list[Path]:
        """Write the embeddings for other engines; returns the files written.

        ``"npy"``: ``embeddings.npy`` (float32 ``[n, d]``) plus ``metadata.json`` (``ids``, ``paths``,
        ``dim``, ``metric``, ``model_config_hash``): row ``i`` of the array is ``ids[i]``.
        ``"faiss"``: ``index.faiss`` (an exact ``IndexFlatL2``, or the approximate index if one was
        built; FAISS row ``i`` is ``ids[i]``) plus the same ``metadata.json``.
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "ids": self._ids,
            "paths": self._paths,
            "dim": self.dim,
            "count": len(self),
            "metric": "sqeuclidean",
            "model_config_hash": self.model_hash,
        }
        written = []
        if format == "npy":
            with atomic_path(out / EMBEDDINGS) as tmp, open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(self._emb, dtype=np.float32), allow_pickle=False)
            written.append(out / EMBEDDINGS)
        elif format == "faiss":
            if isinstance(self._ann, ApproximateIndex):
                self._ann.save(out / "index.faiss")
            else:
                write_flat_faiss(np.asarray(self._emb), out / "index.faiss")
            written.append(out / "index.faiss")
        else:
            raise ValueError(f"format must be 'npy' or 'faiss', got {format!r}")
        write_json_atomic(out / "metadata.json", meta, indent=None)
        written.append(out / "metadata.json")
        return written
