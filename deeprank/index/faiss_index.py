"""``FaissIndex``: approximate nearest-neighbour search through FAISS (optional: ``deeprank[faiss]``).

The approximate :class:`~deeprank.index.backend.Backend`. Exact search (:class:`~deeprank.FlatIndex`)
is the default and right up to a few million vectors; past that an approximate index trades a little
recall for speed and memory. ``kind`` is a shorthand or any FAISS index factory string:

- ``"hnsw"``: ``IndexHNSWFlat`` (graph, vectors kept uncompressed; high recall, more memory).
  Options: ``m`` (graph degree, 32), ``ef_construction`` (80), ``ef_search`` (64).
- ``"ivfpq"``: ``IndexIVFPQ`` (inverted lists + product quantisation; compact). Options: ``nlist``
  (default about ``4 sqrt(N)``), ``m`` (sub-quantisers, a divisor of ``d``), ``nbits`` (8), ``nprobe`` (16).
- ``"flat"``: ``IndexFlatL2`` (exact; what ``Index.export(format="faiss")`` writes without an
  approximate index).
- a factory string such as ``"IVF4096,PQ32"``, ``"HNSW32"`` or ``"IVF65536_HNSW32,PQ64"``
  (:func:`faiss.index_factory`, L2 metric). Options: ``nprobe``, ``ef_search``.

Indexes that need training (IVF, PQ) are trained on a random sample of ``train_size`` vectors (default
``min(N, max(100_000, 64 * nlist))``, seed ``train_seed``). Query-time knobs: ``nprobe`` (IVF lists
visited) and ``ef_search`` (HNSW beam, also of an IVF's HNSW quantiser), set for good with
:meth:`FaissIndex.set_search_params` or per call of :meth:`FaissIndex.search`.

Keys: an IVF index stores them itself (``add_with_ids``), so it can also delete
(:meth:`FaissIndex.remove`); other kinds number rows in insertion order and this class keeps the key
of each row (the FAISS file itself is then a plain index, row ``i`` the ``i``-th vector added). HNSW
cannot delete: ``remove`` raises ``NotImplementedError`` (the :class:`~deeprank.Index` drops it).

``on_disk=True`` (IVF only) saves the inverted lists to ``approximate.ivfdata`` (faiss's
``OnDiskInvertedLists``); loading maps that file read-only, so an index larger than RAM is searched
from the page cache. Such a loaded index cannot change (``add``/``remove`` raise
``NotImplementedError``): rebuild it. Distances are squared Euclidean like the exact path (PQ's are
approximations). Always report the recall against exact search
(:func:`deeprank.index.backend.recall_against_exact`) with the index you deploy.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeeprankError, IndexFormatError
from ..io import atomic_path
from ..ops.topk import as_float32
from .format import APPROXIMATE, APPROXIMATE_KEYS
from .keys import RowKeys, as_keys

__all__ = ["KINDS", "FaissIndex"]

KINDS = ("hnsw", "ivfpq", "flat")
IVFDATA = "approximate.ivfdata"
DEFAULT_TRAIN_SIZE = 100_000


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise DeeprankError(
            "approximate search needs FAISS: pip install 'deeprank[faiss]' (or faiss-cpu)"
        ) from None
    return faiss


def _pq_subquantizers(dim: int) -> int:
    """The largest divisor of ``dim`` that is at most ``min(64, dim // 2)`` (about 2+ dims per code)."""
    for m in range(min(64, max(1, dim // 2)), 0, -1):
        if dim % m == 0:
            return m
    return 1


def _factory(faiss: Any, d: int, n: int, kind: str, options: dict[str, Any]) -> Any:
    """The untrained, empty FAISS index of ``kind`` (shorthands use their options)."""
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(options.pop("m", 32)))
        index.hnsw.efConstruction = int(options.pop("ef_construction", 80))
        options.setdefault("ef_search", 64)
        return index
    if kind == "ivfpq":
        # FAISS wants >= 39 training points per list; keep nlist small enough for the data.
        nlist = int(options.pop("nlist", max(1, min(int(4 * math.sqrt(n)), n // 39))))
        m = int(options.pop("m", _pq_subquantizers(d)))
        if d % m:
            raise ValueError(f"m={m} must divide the dimension {d}")
        default_bits = 8 if n >= 256 * 39 else max(4, min(8, int(math.log2(max(n, 16) / 39))))
        nbits = int(options.pop("nbits", default_bits))
        options.setdefault("nprobe", min(16, nlist))
        return faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, nlist, m, nbits)
    if kind == "flat":
        return faiss.IndexFlatL2(d)
    try:
        return faiss.index_factory(d, kind, faiss.METRIC_L2)
    except RuntimeError as exc:
        raise ValueError(
            f"kind must be one of {', '.join(map(repr, KINDS))} or a FAISS factory string, got {kind!r}: "
            f"{str(exc).strip().splitlines()[-1]}"
        ) from None


def _ivf(faiss: Any, index: Any) -> Any | None:
    """The IVF part of ``index`` (None for graphs and flat indexes)."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _kind_of(index: Any) -> str:
    name = type(index).__name__
    return "hnsw" if "HNSW" in name else "ivfpq" if "IVF" in name else "flat" if "Flat" in name else "faiss"


def _sample(x: np.ndarray, size: int, seed: int) -> np.ndarray:
    if size >= x.shape[0]:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=size, replace=False))
    return np.ascontiguousarray(x[rows])


class FaissIndex:
    """A FAISS index over keyed vectors; ``search`` returns ``(distances, keys)``.

    Build one with :meth:`build`; ``info`` holds the kind, size, parameters and build time.
    """

    backend_name = "faiss"  # how an index manifest records this backend

    def __init__(self, index: Any, keys: RowKeys, info: dict[str, Any], *, read_only: bool = False) -> None:
        if len(keys) != index.ntotal:
            raise ValueError(f"got {len(keys)} keys for a FAISS index of {index.ntotal} vectors")
        faiss = _faiss()
        self.index = index
        self.info = info
        self._keys = keys
        self._ivf_part = _ivf(faiss, index)
        self._read_only = read_only  # lists mapped from a saved file: never written to
        self._lock = threading.Lock()  # per-call search parameters are set on the shared index

    @classmethod
    def build(
        cls,
        vectors: Any,
        keys: Any = None,
        kind: str = "hnsw",
        *,
        train_size: int | None = None,
        train_seed: int = 0,
        on_disk: bool = False,
        **options: Any,
    ) -> FaissIndex:
        """Build a ``kind`` index (see the module docstring) over ``vectors`` ``[n, d]``, ``n >= 1``."""
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))} or a FAISS factory string")
        faiss = _faiss()
        x = as_float32(vectors, "vectors", 2)
        if x.shape[0] == 0 and kind != "flat":  # graphs and trained lists need data
            raise ValueError(f"vectors must be a non-empty [n, d] array, got shape {x.shape}")
        row_keys = RowKeys.identity(x.shape[0]) if keys is None else RowKeys(as_keys(keys, x.shape[0]))
        n, d = x.shape
        start = time.perf_counter()
        index = _factory(faiss, d, n, kind, options)
        search = {name: options.pop(name) for name in ("nprobe", "ef_search") if name in options}
        if options:
            raise TypeError(f"unknown options for {kind}: {sorted(options)}")
        ivf = _ivf(faiss, index)
        if on_disk and ivf is None:
            raise ValueError(f"on_disk needs an IVF index (e.g. 'IVF4096,PQ32'), not {kind!r}")
        trained = 0
        if not index.is_trained:
            nlist = ivf.nlist if ivf is not None else 1
            size = train_size or min(n, max(DEFAULT_TRAIN_SIZE, 64 * nlist))
            sample = _sample(x, int(size), train_seed)
            index.train(sample)
            trained = sample.shape[0]
        train_s = time.perf_counter() - start
        if ivf is not None:
            index.add_with_ids(x, row_keys.array)
        else:
            index.add(x)
        info = {
            "kind": kind,
            "count": n,
            "dim": d,
            "train_vectors": trained,
            "train_seconds": train_s,
            "on_disk": bool(on_disk),
            **({"nlist": int(ivf.nlist), "code_bytes": int(ivf.code_size)} if ivf is not None else {}),
        }
        built = cls(index, row_keys, info)
        built.set_search_params(**search)
        built.info["build_seconds"] = time.perf_counter() - start
        return built

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return f"FaissIndex(kind={self.info.get('kind')!r}, n={len(self)}, dim={self.dim})"

    # ------------------------------------------------------------------ query-time parameters

    def search_params(self) -> dict[str, int]:
        """The current ``nprobe`` / ``ef_search`` of the index (those that apply to it)."""
        faiss = _faiss()
        params = {}
        if self._ivf_part is not None:
            params["nprobe"] = int(self._ivf_part.nprobe)
            quantizer = faiss.downcast_index(self._ivf_part.quantizer)
            if hasattr(quantizer, "hnsw"):
                params["ef_search"] = int(quantizer.hnsw.efSearch)
        else:
            inner = faiss.downcast_index(self.index)
            if hasattr(inner, "hnsw"):
                params["ef_search"] = int(inner.hnsw.efSearch)
        return params

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set ``nprobe`` (IVF lists visited) and/or ``ef_search`` (HNSW beam) for later searches.

        A parameter the index has no use for raises ``ValueError`` naming it.
        """
        have = self.search_params()
        space = _faiss().ParameterSpace()
        for name, value, faiss_name in (
            ("nprobe", nprobe, "nprobe"),
            ("ef_search", ef_search, "quantizer_efSearch" if self._ivf_part is not None else "efSearch"),
        ):
            if value is None:
                continue
            if name not in have:
                raise ValueError(f"{name} does not apply to a FAISS {self.info.get('kind')!r} index")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            space.set_index_parameter(self.index, faiss_name, int(value))
        self.info.update(self.search_params())

    @contextlib.contextmanager
    def _params_for_call(self, nprobe: int | None, ef_search: int | None) -> Iterator[None]:
        if nprobe is None and ef_search is None:
            yield
            return
        with self._lock:
            before = self.search_params()
            self.set_search_params(nprobe=nprobe, ef_search=ef_search)
            try:
                yield
            finally:
                self.set_search_params(**before)

    # ------------------------------------------------------------------ changes and search

    def _check_writable(self, what: str) -> None:
        if self._read_only:
            raise NotImplementedError(
                f"this FAISS index's lists are mapped read-only from {IVFDATA}: it cannot {what}; rebuild it"
            )

    def add(self, vectors: Any, keys: Any = None) -> None:
        """Insert ``[n, d]`` vectors under new ``keys`` (default: consecutive after the largest key)."""
        x = as_float32(vectors, "vectors", 2)
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors must have D={self.dim} columns like the index, got D={x.shape[1]}")
        keys = self._keys.fresh(x.shape[0]) if keys is None else as_keys(keys, x.shape[0])
        self._keys.check_new(keys)
        if x.shape[0] == 0:
            return
        self._check_writable("take new vectors")
        if self._ivf_part is not None:
            self.index.add_with_ids(x, keys)
        else:
            self.index.add(x)
        self._keys.append(keys)

    def remove(self, keys: Any) -> int:
        """Delete ``keys`` (IVF and flat kinds); HNSW raises ``NotImplementedError`` (rebuild instead)."""
        faiss = _faiss()
        keys = np.unique(as_keys(keys))
        rows = self._keys.rows_of(keys)  # KeyError for keys not stored
        if self._ivf_part is None and not isinstance(faiss.downcast_index(self.index), faiss.IndexFlat):
            kind = self.info.get("kind")
            raise NotImplementedError(f"a FAISS {kind} index cannot remove vectors; rebuild it")
        self._check_writable("remove vectors")
        if rows.size == 0:
            return 0
        # IVF lists hold the keys themselves; a flat index removes rows and closes up in order.
        selector = faiss.IDSelectorBatch(keys if self._ivf_part is not None else rows)
        removed = int(self.index.remove_ids(selector))
        keep = np.ones(len(self._keys), dtype=bool)
        keep[rows] = False
        self._keys.keep(keep)
        return removed

    def search(
        self, vectors: Any, k: int, *, nprobe: int | None = None, ef_search: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(distances float32 [M, k], keys int64 [M, k])``; a key is -1 where fewer than k were found.

        ``nprobe`` / ``ef_search`` apply to this call only (see :meth:`set_search_params`).
        """
        q = as_float32(vectors, "vectors", 2)
        with self._params_for_call(nprobe, ef_search):
            dist, labels = self.index.search(q, int(k))
        keys = labels.astype(np.int64, copy=False) if self._ivf_part is not None else self._keys.at(labels)
        return dist.astype(np.float32, copy=False), keys

    # ------------------------------------------------------------------ storage

    def describe(self) -> dict[str, Any]:
        """What an index manifest records of this backend."""
        return {
            "kind": self.info.get("kind"),
            "on_disk": bool(self.info.get("on_disk")),
            **self.search_params(),
        }

    def write(self, path: str | os.PathLike) -> Path:
        """Write the FAISS index (in-memory lists) to the file ``path``, atomically."""
        with atomic_path(path) as tmp:
            _faiss().write_index(self.index, str(tmp))
        return Path(path)

    def save(self, directory: str | Path) -> list[str]:
        """Write ``approximate.faiss`` (plus ``approximate.ivfdata`` on disk, and
        ``approximate.keys.npy`` unless row ``i`` has key ``i``); returns the names."""
        directory = Path(directory)
        names = [APPROXIMATE]
        if self.info.get("on_disk"):
            self._write_on_disk(directory)
            names.append(IVFDATA)
        else:
            self.write(directory / APPROXIMATE)
        if not self._keys.is_identity():
            with atomic_path(directory / APPROXIMATE_KEYS) as tmp, open(tmp, "wb") as fh:
                np.save(fh, self._keys.array, allow_pickle=False)
            names.append(APPROXIMATE_KEYS)
        return names

    def _write_on_disk(self, directory: Path) -> None:
        """Write the index with its lists in ``IVFDATA`` beside it (a new folder of a save)."""
        faiss = _faiss()
        ivf = self._ivf_part
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        if isinstance(lists, faiss.OnDiskInvertedLists):  # loaded from a saved index: same bytes again
            try:
                os.link(lists.filename, directory / IVFDATA)
            except OSError:
                shutil.copyfile(lists.filename, directory / IVFDATA)
            self.write(directory / APPROXIMATE)
            return
        on_disk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(directory / IVFDATA))
        sources = faiss.InvertedListsPtrVector()
        sources.push_back(ivf.invlists)
        on_disk.merge_from_multiple(sources.data(), sources.size())
        # Write the index pointing at the on-disk lists, then give it its in-memory lists back.
        ivf.own_invlists = False
        ivf.replace_invlists(on_disk, False)
        try:
            self.write(directory / APPROXIMATE)
        finally:
            ivf.replace_invlists(lists, True)

    @classmethod
    def load(cls, directory: str | Path) -> FaissIndex:
        """Open what :meth:`save` wrote (on-disk lists mapped read-only)."""
        directory = Path(directory)
        faiss = _faiss()
        on_disk = (directory / IVFDATA).exists()
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY if on_disk else 0
        try:
            index = faiss.read_index(str(directory / APPROXIMATE), flags)
        except RuntimeError as exc:
            raise IndexFormatError(
                f"{directory / APPROXIMATE} is not a readable FAISS index: {exc}"
            ) from None
        keys = RowKeys.identity(index.ntotal)
        if (directory / APPROXIMATE_KEYS).exists():
            try:
                keys = RowKeys(np.load(directory / APPROXIMATE_KEYS, allow_pickle=False))
            except (TypeError, ValueError, OSError) as exc:
                raise IndexFormatError(
                    f"{directory / APPROXIMATE_KEYS} is not a valid set of keys: {exc}"
                ) from None
        info = {"kind": _kind_of(index), "count": int(index.ntotal), "dim": int(index.d), "on_disk": on_disk}
        try:
            loaded = cls(index, keys, info, read_only=on_disk)
        except ValueError as exc:
            raise IndexFormatError(f"{directory / APPROXIMATE_KEYS}: {exc}") from None
        loaded.info.update(loaded.search_params())
        return loaded
