"""``Index``: an image collection's embeddings under user ids (and image paths), searchable and saved.

Build one from a trained model and an image folder, or from vectors plus ids::

    index = Index.build(model_or_checkpoint_dir, "photos/")        # recursive, batched, progress bar
    index = Index.from_vectors(vectors, ids=["a", "b", ...])
    result = index.search("query.jpg", k=10)                        # path, PIL image, images, vectors
    for hit in result.hits(0):
        print(hit["rank"], hit["id"], hit["path"], hit["distance"])
    index.save("photos.index"); index = Index.load("photos.index")

The ``Index`` is the keyed front: it maps user ids (str or int) and paths to int64 keys and leaves
vectors and search to backends (:mod:`deeprank.index.backend`): always a
:class:`~deeprank.index.flat.FlatIndex` (the vectors, exact search), plus optionally an approximate one
(:meth:`build_approximate` builds a :class:`~deeprank.index.faiss_index.FaissIndex`,
:meth:`to_milvus` fills a :class:`~deeprank.index.milvus_index.MilvusIndex`; :meth:`set_approximate`
takes any backend), used by ``search(..., approximate=True)``. Items keep their
insertion order and get increasing keys, so item ``i`` is row ``i`` of every backend; changes go to
every backend, and one that cannot follow a change (FAISS cannot delete) is dropped.

Distances are the paper's squared Euclidean ``||f(q) - f(x)||^2``, ascending, ties by item order.
Queries are turned into vectors by :func:`deeprank.embedding.queries.query_vectors`; the on-disk format
(version 2, atomic and checksummed throughout) is :mod:`deeprank.index.format`.

The model is checked twice against what the index recorded: its architecture (config hash) and, when
its checkpoint directory is known, its weights (sha256 of ``model.safetensors``, see
:func:`deeprank.models.checkpoint.weights_hash`). A mismatch raises
:class:`deeprank.errors.ModelMismatchError` naming both hashes. A model object with no checkpoint
directory is checked by architecture only.

Stable API for other layers (``deeprank serve``): ``Index.load``, ``Index.search`` (path, PIL image,
vector(s)), ``SearchResult.hits``, ``Index.path_of``, ``Index.ids``, ``len(index)``, ``Index.dim``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..embedding.embed import embed_folder, embed_images
from ..embedding.parquet import write_parquet
from ..embedding.queries import image_sources, query_vectors
from ..embedding.shards import is_shard_set
from ..errors import DeeprankError, IndexFormatError, ModelMismatchError
from ..io import atomic_path, write_bytes_atomic
from ..models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, config_hash, resolve_model, weights_hash
from ..ops.checks import check_k
from .backend import Backend, recall_against_exact
from .export import write_export
from .faiss_index import FaissIndex
from .flat import FlatIndex
from .format import (
    APPROXIMATE,
    EMBEDDINGS,
    ITEMS,
    MODEL_DIR,
    new_manifest,
    read_index,
    read_items,
    save_directory,
    write_items,
)
from .keys import RowKeys
from .milvus_index import MilvusIndex
from .registry import backend_class, manifest_entry
from .results import SearchResult
from .shards import ShardedFlatIndex, open_shard_set

__all__ = ["Index"]


def _model_facts(model: Any) -> tuple[str | None, Any]:
    """``(config hash, config)`` of a model (``(None, None)`` without a config)."""
    config = getattr(model, "config", None)
    if config is None:
        return None, None
    return config_hash(config), config


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """``x`` as float32 C-contiguous ``[n, d]`` (a float32 C-contiguous array, memory map included, as is)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    if not isinstance(arr, np.ndarray):
        arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D array [n, d], got shape {arr.shape}")
    if arr.dtype != np.float32 or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr


def _weights_of(checkpoint: Path | None) -> str | None:
    """The weights hash of a checkpoint directory (None when there is none or it has no weights file)."""
    if checkpoint is None or not (Path(checkpoint) / WEIGHTS_FILE).is_file():
        return None
    return weights_hash(checkpoint)


def _fields_for(backend: Backend, fields: dict[str, Any]) -> dict[str, Any]:
    """The item fields (ids, paths, metadata) that ``backend.add`` stores (Milvus), else none."""
    accepted = inspect.signature(backend.add).parameters
    return {k: v for k, v in fields.items() if k in accepted and v is not None}


def _check_search_params(backend: Backend, params: dict[str, Any], approximate: bool) -> None:
    """Refuse query-time parameters the chosen backend does not take, naming them."""
    if not params:
        return
    if not approximate:
        raise ValueError(f"{', '.join(params)} apply to approximate search only (approximate=True)")
    accepted = inspect.signature(backend.search).parameters
    unknown = [name for name in params if name not in accepted]
    if unknown:
        raise ValueError(f"the {type(backend).__name__} backend does not take {', '.join(unknown)}")


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")


def _check_ids(ids: Sequence[Any], n: int, what: str = "embeddings") -> list[Any]:
    """``ids`` as a list of unique str / int (numpy integers become ints), one per item."""
    ids = [i.item() if isinstance(i, np.generic) else i for i in ids]
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} ids for {n} {what}")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, str)):
            raise TypeError(f"ids must be str or int, got {type(i).__name__}")
    if len(set(ids)) != n:
        raise ValueError("ids must be unique")
    return ids


class Index:
    """Embeddings plus ids (and image paths), searchable by image or by vector. See the module docstring.

    Args:
        embeddings: float32 ``[n, d]`` vectors (used in place when float32 and C-contiguous), or a
            :class:`FlatIndex` or :class:`~deeprank.index.shards.ShardedFlatIndex` whose keys increase
            row by row (used as the exact backend).
        ids: one unique str or int per row (default ``0 .. n-1``).
        paths: the image file of each row (None for rows added as vectors).
        model: the model that embeds image queries; ``checkpoint``: its directory (loaded on demand
            when ``model`` is not given); ``model_hash``: the config hash to check models against;
            ``weights_hash``: the weights' sha256 to check them against (default: that of
            ``checkpoint`` when ``model`` is given).
    """

    def __init__(
        self,
        embeddings: Any,
        ids: Sequence[Any] | None = None,
        paths: Sequence[str | os.PathLike | None] | None = None,
        *,
        model: torch.nn.Module | None = None,
        checkpoint: str | os.PathLike | None = None,
        model_hash: str | None = None,
        weights_hash: str | None = None,
    ) -> None:
        exact = (
            embeddings
            if isinstance(embeddings, (FlatIndex, ShardedFlatIndex))
            else FlatIndex(_as_matrix(embeddings, "embeddings"), copy=False)
        )
        n = len(exact)
        keys = RowKeys(exact.keys)
        if not keys.ascending:
            raise ValueError("the FlatIndex's keys must increase row by row (item order is row order)")
        self._ids: list[Any] = list(range(n)) if ids is None else _check_ids(ids, n)
        if paths is not None and len(paths) != n:
            raise ValueError(f"got {len(paths)} paths for {n} embeddings")
        self._paths: list[str | None] = (
            [None] * n if paths is None else [None if p is None else str(p) for p in paths]
        )
        self._keys = keys  # key of item i; items and backend rows share one order
        self._exact = exact
        self._approximate: Backend | None = None
        self._pos: dict[Any, int] | None = None
        self._model = model
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        facts = _model_facts(model)
        self.model_hash = model_hash if model_hash is not None else facts[0]
        self.model_config = facts[1]
        if weights_hash is None and model is not None:
            weights_hash = _weights_of(self.checkpoint)
        self.weights_hash = weights_hash
        self.skipped: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_vectors(
        cls, vectors: Any, ids: Sequence[Any] | None = None, paths: Sequence[Any] | None = None
    ) -> Index:
        """An index over given embedding vectors ``[n, d]`` (ids default to ``0..n-1``)."""
        index = cls(vectors, ids, paths)
        _check_finite(index.embeddings, "vectors")
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
        workers: int | None = None,
    ) -> Index:
        """Embed every image under ``folder`` with ``model`` (a model or a checkpoint directory).

        Ids are the image paths relative to ``folder`` (``/``-separated); files that cannot be read
        are skipped and listed in ``index.skipped`` as ``(path, reason)``. ``workers`` decode processes
        as in :func:`deeprank.embedding.embed_images` (default: one per core but one, 0: in-process).
        """
        model, checkpoint = resolve_model(model)
        root = Path(folder)
        emb, files, skipped = embed_folder(
            model, root, recursive=recursive, batch_size=batch_size, progress=progress, workers=workers
        )
        ids = [f.relative_to(root).as_posix() for f in files]
        index = cls(emb, ids, [str(f.resolve()) for f in files], model=model, checkpoint=checkpoint)
        index.skipped = skipped
        return index

    # ------------------------------------------------------------------ basic facts

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"Index(count={len(self)}, dim={self.dim}, model_hash={self.model_hash!r})"

    @property
    def dim(self) -> int:
        return self._exact.dim

    @property
    def embeddings(self) -> np.ndarray:
        """float32 ``[count, dim]``, row ``i`` = item ``i`` (read-only; a memory map after ``load``, or
        :class:`~deeprank.index.shards.ShardedVectors` for a sharded run)."""
        return self._exact.vectors

    @property
    def ids(self) -> list[Any]:
        return list(self._ids)

    @property
    def paths(self) -> list[str | None]:
        return list(self._paths)

    @property
    def keys(self) -> np.ndarray:
        """The int64 backend key of each item, in item order (increasing; read-only)."""
        return self._keys.array

    @property
    def approximate_index(self) -> Backend | None:
        """The backend of ``search(approximate=True)`` (a :class:`FaissIndex` once built), or None."""
        return self._approximate

    def position(self, item_id: Any) -> int:
        """Row of ``item_id`` (``KeyError`` if absent)."""
        return self._positions()[item_id]

    def _positions(self) -> dict[Any, int]:
        """id -> row, built on first use after a change."""
        if self._pos is None:
            self._pos = {i: r for r, i in enumerate(self._ids)}
        return self._pos

    def path_of(self, item_id: Any) -> str | None:
        """Absolute image path of an item (None for items added as vectors)."""
        return self._paths[self.position(item_id)]

    def vector(self, item_id: Any) -> np.ndarray:
        """The stored embedding of one item."""
        return np.array(self.embeddings[self.position(item_id)])

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
            self._check_model(model, self.checkpoint)
            self._model = model
        return self._model

    def _check_model(self, model: torch.nn.Module, checkpoint: Path | None) -> None:
        """Refuse a model of another dimension, architecture or (from ``checkpoint``) weights."""
        dim = getattr(model, "embedding_dim", None)
        if dim is not None and int(dim) != self.dim:
            raise ModelMismatchError(f"the model embeds into {dim} dimensions but the index holds {self.dim}")
        h, _ = _model_facts(model)
        if self.model_hash is not None and h is not None and h != self.model_hash:
            raise ModelMismatchError(
                f"the model (config hash {h}) is not the one this index was built with "
                f"(config hash {self.model_hash})"
            )
        w = _weights_of(checkpoint)
        if self.weights_hash is not None and w is not None and w != self.weights_hash:
            raise ModelMismatchError(
                f"the model's weights in {checkpoint} (sha256 {w}) are not the ones this index was "
                f"built with (sha256 {self.weights_hash}); rebuild the index or pass the original model"
            )

    # ------------------------------------------------------------------ changes

    def add(
        self,
        items: Any,
        ids: Sequence[Any] | None = None,
        paths: Sequence[Any] | None = None,
        *,
        metadata: Any = None,
    ) -> list[tuple[str, str]]:
        """Add vectors ``[n, d]`` / ``[d]`` or images (paths / PIL images, embedded with the index's model).

        Ids default to the image paths, or to consecutive integers after the largest int id for
        vectors. ``metadata`` (a dict per item, or a dict of columns) goes to backends that store it
        (Milvus) for filtered search. Returns the ``(source, reason)`` list of images that could not
        be read (not added).
        """
        sources = image_sources(items)
        if sources is not None:
            vectors, ids, paths, skipped = self._embed_new(sources, ids, paths)
        else:
            vectors, skipped = self._as_vectors(items), []
            if ids is None:
                ints = [i for i in self._ids if isinstance(i, int)]
                first = max(ints) + 1 if ints else 0
                ids = list(range(first, first + vectors.shape[0]))
        ids = _check_ids(ids, vectors.shape[0], "vectors")
        if paths is not None and len(paths) != len(ids):
            raise ValueError(f"got {len(paths)} paths for {len(ids)} vectors")
        clash = [i for i in ids if i in self._positions()]
        if clash:
            raise ValueError(f"ids already in the index: {sorted(map(str, clash))[:5]}")
        _check_finite(vectors, "vectors")
        if metadata is not None and not (
            self._approximate is not None and "metadata" in _fields_for(self._approximate, {"metadata": 1})
        ):
            raise ValueError("metadata is kept only by a Milvus backend (to_milvus); this index has none")
        keys = self._keys.fresh(len(ids))
        paths = [None] * len(ids) if paths is None else [None if p is None else str(p) for p in paths]
        fields = {"ids": ids, "paths": paths, "metadata": metadata}
        self._change_backends(lambda backend: backend.add(vectors, keys, **_fields_for(backend, fields)))
        self._keys.append(keys)
        first = len(self._ids)
        self._ids += ids
        self._paths += paths
        self._positions().update(
            (i, first + r) for r, i in enumerate(ids)
        )  # kept current: O(added), not O(len)
        return skipped

    def _as_vectors(self, items: Any) -> np.ndarray:
        arr = items.detach().cpu().numpy() if isinstance(items, torch.Tensor) else np.asarray(items)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape [n, {self.dim}], got {arr.shape}")
        return _as_matrix(arr, "vectors")

    def _embed_new(
        self, sources: list[Any], ids: Sequence[Any] | None, paths: Sequence[Any] | None
    ) -> tuple[np.ndarray, list[Any], list[Any], list[tuple[str, str]]]:
        """Embed image sources to add: ``(vectors, ids, paths, skipped)`` of the readable ones."""
        res = embed_images(self.model, sources, progress=False)
        file_like = [isinstance(s, (str, os.PathLike)) for s in sources]
        if ids is None:
            if not all(file_like):
                raise ValueError("ids are required when adding PIL images")
            ids = [str(s) for s in sources]
        if len(ids) != len(sources):
            raise ValueError(f"got {len(ids)} ids for {len(sources)} images")
        if paths is None:
            paths = [str(Path(s).resolve()) if f else None for s, f in zip(sources, file_like, strict=True)]
        kept = res.kept.tolist()
        return res.embeddings, [ids[i] for i in kept], [paths[i] for i in kept], res.skipped

    def remove(self, ids: Iterable[Any]) -> int:
        """Remove items by id; unknown ids raise ``KeyError``. Returns the number removed."""
        ids = list(ids)
        positions = self._positions()
        missing = [i for i in ids if i not in positions]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        if not ids:
            return 0
        rows = np.unique(np.fromiter((positions[i] for i in ids), dtype=np.int64, count=len(ids)))
        keys = self._keys.array[rows].copy()
        self._change_backends(lambda backend: backend.remove(keys))
        keep = np.ones(len(self), dtype=bool)
        keep[rows] = False
        self._keys.keep(keep)
        self._ids = [i for i, k in zip(self._ids, keep, strict=True) if k]
        self._paths = [p for p, k in zip(self._paths, keep, strict=True) if k]
        self._pos = None
        return int(rows.size)

    def _change_backends(self, change: Callable[[Backend], object]) -> None:
        """Apply ``change`` to every backend; an approximate one that cannot follow it is dropped."""
        change(self._exact)
        if self._approximate is not None:
            try:
                change(self._approximate)
            except NotImplementedError:
                self._approximate = None  # search(approximate=True) needs build_approximate() again

    # ------------------------------------------------------------------ search

    def search(
        self,
        query: Any,
        k: int = 10,
        *,
        approximate: bool = False,
        nprobe: int | None = None,
        ef_search: int | None = None,
        filter: str | None = None,
    ) -> SearchResult:
        """The ``k`` nearest items of each query.

        ``query`` may be an image path, a folder of images, a PIL image, a list of paths/PIL images, an
        image array ``[N, C, H, W]`` / ``[C, H, W]`` (floats in [0, 1] or uint8), embedding vectors
        ``[M, d]`` or ``[d]``, or another :class:`Index` (a query set against this reference set).
        Images need a model (given, or the index's checkpoint). ``approximate=True`` searches the
        approximate backend (:meth:`build_approximate`, :meth:`set_approximate`), with its query-time
        parameters for this call: ``nprobe`` / ``ef_search`` (FAISS), ``filter`` (a Milvus boolean
        expression on stored metadata, e.g. ``"category == 'shoes'"``; fewer than ``k`` hits then
        come back as ``None`` ids). A backend without one of them raises ``ValueError`` naming it.
        """
        k = check_k(k, len(self), "the number of items in the index")
        backend = self._backend(approximate)
        params = {
            name: value
            for name, value in (("nprobe", nprobe), ("ef_search", ef_search), ("filter", filter))
            if value is not None
        }
        _check_search_params(backend, params, approximate)
        q = query_vectors(query, dim=self.dim, model=lambda: self.model, model_hash=self.model_hash)
        dist, keys = backend.search(q, k, **params)
        keys = np.asarray(keys, dtype=np.int64)
        rows = np.full(keys.shape, -1, dtype=np.int64)
        found = keys >= 0
        rows[found] = self._keys.rows_of(keys[found])
        ids = [[self._ids[j] if j >= 0 else None for j in row] for row in rows.tolist()]
        paths = [[self._paths[j] if j >= 0 else None for j in row] for row in rows.tolist()]
        return SearchResult(np.asarray(dist, dtype=np.float32), rows, ids, paths)

    def _backend(self, approximate: bool) -> Backend:
        if not approximate:
            return self._exact
        if self._approximate is None:
            raise DeeprankError("no approximate index: call build_approximate() first")
        return self._approximate

    # ------------------------------------------------------------------ approximate search

    def build_approximate(
        self, kind: str = "hnsw", *, recall_queries: int = 1000, k: int = 10, **options: Any
    ) -> dict:
        """Build a FAISS index for ``search(approximate=True)``: ``kind`` is ``"hnsw"``, ``"ivfpq"`` or a
        factory string such as ``"IVF4096,PQ32"``; ``options`` go to :meth:`FaissIndex.build`
        (``train_size``, ``on_disk``, ``nprobe``, ``ef_search``, ...).

        Returns a report with the build facts and recall@k against exact search on up to
        ``recall_queries`` items of the index used as queries. Needs ``faiss`` (extra ``deeprank[faiss]``).
        """
        backend = FaissIndex.build(self.embeddings, self._keys.array, kind, **options)
        return {**backend.info, **self.set_approximate(backend, recall_queries=recall_queries, k=k)}

    def to_milvus(
        self,
        uri: str | os.PathLike,
        collection: str,
        *,
        metadata: Any = None,
        overwrite: bool = False,
        attach: bool = True,
        batch_size: int = 5_000,
        progress: bool = False,
        recall_queries: int = 1000,
        k: int = 10,
        **create: Any,
    ) -> dict:
        """Write every item (key, vector, id, path, ``metadata``) to a Milvus collection.

        ``uri``: a Milvus Lite file (``"photos.db"``) or a server URI; ``create`` goes to
        :meth:`MilvusIndex.create` (``index_type``, ``index_params``). Rows are upserted in batches of
        ``batch_size`` (a re-run writes the same rows again). ``overwrite`` replaces an existing
        collection; ``attach=True`` makes it the backend of ``search(approximate=True)`` (and of
        ``filter=``) and returns its recall against exact search, else (an export) returns the count.
        Needs ``pymilvus`` (extra ``deeprank[milvus]``).
        """
        target = MilvusIndex.create(uri, collection, self.dim, overwrite=overwrite, **create)
        target.add(
            self.embeddings,
            self._keys.array,
            ids=self._ids,
            paths=self._paths,
            metadata=metadata,
            batch_size=batch_size,
            progress=progress,
        )
        report = {"backend": "milvus", **target.describe(), "count": len(target)}
        if attach:
            report.update(self.set_approximate(target, recall_queries=recall_queries, k=k))
        return report

    def set_approximate(self, backend: Backend, *, recall_queries: int = 1000, k: int = 10) -> dict:
        """Use ``backend`` (holding this index's vectors under its keys) for ``search(approximate=True)``.

        Returns its recall@k against exact search (see :meth:`approximate_recall`).
        """
        if len(backend) != len(self) or backend.dim != self.dim:
            raise ValueError(
                f"the backend holds {len(backend)} vectors of dimension {backend.dim}; "
                f"this index {len(self)} of dimension {self.dim}"
            )
        self._approximate = backend
        return self.approximate_recall(recall_queries, k)

    def approximate_recall(self, queries: int = 1000, k: int = 10, seed: int = 0) -> dict:
        """Recall@k of the approximate backend against exact search, using up to ``queries`` random
        items of the index as queries; also both search times."""
        backend = self._backend(approximate=True)
        rows = np.sort(
            np.random.default_rng(seed).choice(len(self), size=min(queries, len(self)), replace=False)
        )
        return recall_against_exact(self._exact, backend, np.ascontiguousarray(self.embeddings[rows]), k)

    # ------------------------------------------------------------------ storage

    def save(self, path: str | os.PathLike, *, include_model: bool = False, overwrite: bool = True) -> Path:
        """Write the index directory atomically (:mod:`deeprank.index.format`); returns its path.

        ``include_model`` copies the model's weights and config (never training state) into
        ``model/`` so the index is self-contained. An existing directory is replaced only if it is a
        deeprank index (never a folder of other files); readers see the old or the new index, whole.
        """
        approximate = None if self._approximate is None else manifest_entry(self._approximate)
        if include_model and (self.checkpoint is None or not Path(self.checkpoint).is_dir()):
            raise DeeprankError("include_model needs the index's checkpoint directory, which is unknown")
        checkpoint = None if self.checkpoint is None else str(Path(self.checkpoint).resolve())
        manifest = new_manifest(
            self.dim,
            len(self),
            config_hash=self.model_hash,
            config=self.model_config,
            checkpoint=MODEL_DIR if include_model else checkpoint,
            weights_hash=self.weights_hash,
            approximate=approximate,
        )

        def fill(folder: Path) -> list[str]:
            files = [*self._exact.save(folder), write_items(folder, self._ids, self._paths)]
            if self._approximate is not None:
                files += self._approximate.save(folder)
            if include_model:
                files += self._copy_model(folder / MODEL_DIR)
            return files

        return save_directory(path, manifest, fill, overwrite=overwrite)

    def _copy_model(self, folder: Path) -> list[str]:
        """Copy the checkpoint's weights and config (not its training state) into ``folder``."""
        assert self.checkpoint is not None
        names = []
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            source = Path(self.checkpoint) / name
            if not source.is_file():
                raise DeeprankError(f"include_model: the checkpoint {self.checkpoint} has no {name}")
            write_bytes_atomic(folder / name, source.read_bytes())
            names.append(f"{MODEL_DIR}/{name}")
        if self.weights_hash is not None and weights_hash(folder) != self.weights_hash:
            raise ModelMismatchError(
                f"the checkpoint {self.checkpoint} changed since the index was built (its weights' sha256 "
                f"is now {weights_hash(folder)}, the index's {self.weights_hash}); not copying it"
            )
        return names

    @classmethod
    def _from_shard_set(cls, root: Path, verify: bool) -> Index:
        """An index over a sharded embedding run, its vectors searched in place."""
        parts = open_shard_set(root, verify=verify)
        try:
            index = cls(
                parts.backend,
                parts.ids,
                parts.paths,
                checkpoint=parts.model.get("checkpoint"),
                model_hash=parts.model.get("config_hash"),
            )
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{root}'s shard ids do not match their embeddings: {exc}") from None
        index.model_config = parts.model.get("config")
        index.skipped = parts.skipped
        return index

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: torch.nn.Module | str | os.PathLike | None = None,
        *,
        verify: bool = True,
        mmap: bool = True,
    ) -> Index:
        """Open an index directory, checking it (see :func:`deeprank.index.format.read_manifest`).

        ``model`` (a model or checkpoint directory) is checked against the manifest's config hash,
        weights hash and dimension; without it, image queries load the checkpoint the index records
        (checked the same way). ``verify=False`` skips the sha256 checksums of the data files (the
        pointer and manifest, sizes and headers are always checked). ``mmap=True`` searches the
        embeddings file in place. A save running meanwhile is waited out (the load retries on the new
        version). A sharded embedding run (:mod:`deeprank.embedding.shards`) opens too, its shards
        searched in place. Raises :class:`deeprank.errors.IndexFormatError` or
        :class:`deeprank.errors.ModelMismatchError`.
        """
        root = Path(path)
        if is_shard_set(root):
            return cls._from_shard_set(root, verify)._use_model(model)
        index = read_index(root, lambda folder, manifest: cls._open(folder, manifest, mmap), verify=verify)
        return index._use_model(model)

    def _use_model(self, model: torch.nn.Module | str | os.PathLike | None) -> Index:
        """Check ``model`` (a model or checkpoint directory) against the index and use it; returns self."""
        if model is not None:
            resolved, ckpt = resolve_model(model)
            self._check_model(resolved, ckpt)
            self._model = resolved
            self.checkpoint = ckpt or self.checkpoint
        return self

    @classmethod
    def _open(cls, folder: Path, manifest: dict[str, Any], mmap: bool) -> Index:
        """The index stored in the (checked) version folder ``folder``."""
        count, dim = manifest["count"], manifest["dim"]
        exact = FlatIndex.load(folder, mmap=mmap)
        if (len(exact), exact.dim) != (count, dim):
            raise IndexFormatError(
                f"{folder / EMBEDDINGS} holds float32 {exact.vectors.shape}; "
                f"the manifest says float32 ({count}, {dim})"
            )
        ids, paths = read_items(folder)
        info = manifest.get("model") or {}
        if not isinstance(info, dict):
            raise IndexFormatError(f"{folder} has a manifest whose model entry is not an object")
        checkpoint = info.get("checkpoint")
        if checkpoint is not None and not Path(checkpoint).is_absolute():
            checkpoint = folder / checkpoint
        try:
            index = cls(
                exact,
                ids,
                paths,
                checkpoint=checkpoint,
                model_hash=info.get("config_hash"),
                weights_hash=info.get("weights_hash"),
            )
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{folder / ITEMS} does not match the embeddings: {exc}") from None
        index.model_config = info.get("config")
        entry = (manifest.get("backends") or {}).get("approximate")
        if entry is None and APPROXIMATE in manifest["files"]:  # version 1 stored FAISS only
            entry = {"backend": "faiss"}
        if entry is not None:
            approximate = backend_class(entry.get("backend") if isinstance(entry, dict) else None).load(
                folder
            )
            if len(approximate) != count:
                raise IndexFormatError(
                    f"the approximate backend in {folder} holds {len(approximate)} vectors, not {count}"
                )
            index._approximate = approximate
        return index

    def export(self, path: str | os.PathLike, format: str = "npy") -> list[Path]:
        """Write the embeddings for other engines into the folder ``path``; returns the files written.

        ``"npy"``: ``embeddings.npy`` (float32 ``[n, d]``) plus ``metadata.json`` (``ids``, ``paths``,
        ``dim``, ``metric``, ``model_config_hash``, ``model_weights_hash``, ``files`` with sizes and
        sha256): row ``i`` of the array is ``ids[i]``. ``"faiss"``: ``index.faiss`` (an exact
        ``IndexFlatL2``, or the FAISS approximate index if one was built in memory; FAISS row ``i``
        is ``ids[i]``, or for an IVF index the FAISS id is ``Index.keys[i]``) plus the same
        ``metadata.json``. ``"parquet"``: ``embeddings.parquet/part-*.parquet`` (``id``, ``path``,
        ``label``, ``vector``; chunked, :func:`deeprank.embedding.parquet.write_parquet`) plus the same
        ``metadata.json``. The folder is replaced as a whole (:mod:`deeprank.index.export`); one
        holding other files is refused.
        """
        if format not in ("npy", "faiss", "parquet"):
            raise ValueError(f"format must be 'npy', 'faiss' or 'parquet', got {format!r}")

        def fill(folder: Path) -> list[Path]:
            if format == "npy":
                with atomic_path(folder / EMBEDDINGS) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, self.embeddings, allow_pickle=False)
                return [folder / EMBEDDINGS]
            if format == "parquet":
                return write_parquet(folder, self._ids, self._paths, self.embeddings)
            approximate = self._approximate
            if not isinstance(approximate, FaissIndex) or approximate.info.get("on_disk"):
                approximate = FaissIndex.build(self.embeddings, kind="flat")  # one self-contained file
            return [approximate.write(folder / "index.faiss")]

        meta = {
            "format": "deeprank-export",
            "ids": self._ids,
            "paths": self._paths,
            "dim": self.dim,
            "count": len(self),
            "metric": "sqeuclidean",
            "model_config_hash": self.model_hash,
            "model_weights_hash": self.weights_hash,
            "keys": self._keys.array.tolist(),  # an IVF index.faiss answers with these, not rows
        }
        return write_export(path, meta, fill)
