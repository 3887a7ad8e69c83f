"""``MilvusIndex``: vectors in a Milvus collection, through ``pymilvus`` (optional: ``deeprank[milvus]``).

A :class:`~deeprank.index.backend.Backend` for collections past one machine's memory, and an export
target. ``uri`` is what :class:`pymilvus.MilvusClient` takes: a local file (``"photos.db"``: Milvus
Lite, no server, the default for tests and local use) or a server (``"http://host:19530"``, a Milvus
standalone or cluster: the same code).

The collection holds one row per item: ``key`` (INT64 primary key, the :class:`~deeprank.Index`'s
key), ``vector`` (FLOAT_VECTOR, L2 metric: squared Euclidean distances like the exact path), and as
dynamic fields the item's ``id``, its ``path`` and any user metadata (``{"category": "shoes",
"date": "2024-05-01"}``), so a search can filter on them (``filter="category == 'shoes'"``, Milvus
boolean expressions). Rows are written in batches with ``upsert`` (a re-run writes the same rows
again instead of duplicating them) and deleted with ``remove``.

Memory: inserts send ``batch_size`` rows per request; against Milvus Lite, searches send as many
queries per request as keep its brute-force temporary (queries x rows x dim floats) under 256 MiB,
one at a time past 512K rows of 128 floats.

The index directory stores only where the collection is (``approximate.milvus.json``: uri,
collection, dim); the rows live in Milvus, outside the directory's atomic saves and checksums.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeeprankError, IndexFormatError
from ..io import write_json_atomic
from ..ops.topk import as_float32
from ..progress import Progress
from .keys import as_keys

__all__ = ["MILVUS_FILE", "MilvusIndex"]

MILVUS_FILE = "approximate.milvus.json"
RESERVED = ("key", "vector", "id", "path")
DEFAULT_BATCH = 5_000
LITE_SEARCH_BYTES = 256 << 20  # Milvus Lite's per-request search temporary (see search)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise DeeprankError("the Milvus backend needs pymilvus: pip install 'deeprank[milvus]'") from None
    return pymilvus


def _local(uri: str) -> bool:
    return "://" not in uri


def _normal_uri(uri: str | os.PathLike) -> str:
    """A local Milvus Lite file as an absolute path (an index directory is opened from anywhere)."""
    text = os.fspath(uri)
    return str(Path(text).resolve()) if _local(text) else text


def _metadata_rows(metadata: Any, n: int) -> list[dict[str, Any]]:
    """``metadata`` (a list of dicts, or a dict of columns) as ``n`` dicts of JSON values."""
    if metadata is None:
        return [{} for _ in range(n)]
    if isinstance(metadata, Mapping):
        for name, column in metadata.items():
            if len(column) != n:
                raise ValueError(f"metadata column {name!r} has {len(column)} values for {n} vectors")
        rows = [{name: metadata[name][i] for name in metadata} for i in range(n)]
    else:
        rows = [dict(r) for r in metadata]
        if len(rows) != n:
            raise ValueError(f"got {len(rows)} metadata rows for {n} vectors")
    for row in rows[:1]:
        for name in row:
            if name in RESERVED or not _NAME.fullmatch(str(name)):
                raise ValueError(
                    f"metadata field {name!r} is reserved or not a valid Milvus field name "
                    f"(reserved: {', '.join(RESERVED)})"
                )
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in rows]


class MilvusIndex:
    """A Milvus collection of keyed vectors; see the module docstring.

    Open an existing collection with ``MilvusIndex(uri, collection)``; make one with :meth:`create`.
    """

    backend_name = "milvus"  # how an index manifest records this backend

    def __init__(self, uri: str | os.PathLike, collection: str, *, client: Any = None) -> None:
        pymilvus = _pymilvus()
        self.uri = _normal_uri(uri)
        self.collection = collection
        try:
            self.client = client or pymilvus.MilvusClient(self.uri)
        except Exception as exc:  # noqa: BLE001 - pymilvus raises many kinds; one clear message
            raise DeeprankError(f"cannot open Milvus at {self.uri}: {exc}") from None
        if not self.client.has_collection(collection):
            raise DeeprankError(f"Milvus at {self.uri} has no collection {collection!r}")
        fields = {f["name"]: f for f in self.client.describe_collection(collection)["fields"]}
        vector = fields.get("vector", {})
        if "key" not in fields or "dim" not in vector.get("params", {}):
            raise DeeprankError(f"the Milvus collection {collection!r} was not written by deeprank")
        self._dim = int(vector["params"]["dim"])

    @classmethod
    def create(
        cls,
        uri: str | os.PathLike,
        collection: str,
        dim: int,
        *,
        index_type: str = "AUTOINDEX",
        index_params: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> MilvusIndex:
        """Make an empty collection for ``dim``-dimensional vectors (L2 metric) and open it.

        ``index_type``/``index_params``: the Milvus vector index (``"HNSW"`` with ``{"M": 16,
        "efConstruction": 200}``, ``"IVF_FLAT"`` with ``{"nlist": 1024}``, ...; Milvus Lite searches
        exactly whatever is asked). An existing collection is refused unless ``overwrite``.
        """
        pymilvus = _pymilvus()
        if not _NAME.fullmatch(collection):
            raise ValueError(f"collection must be a Milvus name (letters, digits, _), got {collection!r}")
        if int(dim) < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        uri = _normal_uri(uri)
        try:
            client = pymilvus.MilvusClient(uri)
        except Exception as exc:  # noqa: BLE001
            raise DeeprankError(f"cannot open Milvus at {uri}: {exc}") from None
        if client.has_collection(collection):
            if not overwrite:
                raise DeeprankError(f"Milvus at {uri} already has a collection {collection!r}")
            client.drop_collection(collection)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("key", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=int(dim))
        params = client.prepare_index_params()
        params.add_index(
            field_name="vector", index_type=index_type, metric_type="L2", params=dict(index_params or {})
        )
        client.create_collection(collection, schema=schema, index_params=params)
        return cls(uri, collection, client=client)

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def __repr__(self) -> str:
        return f"MilvusIndex(uri={self.uri!r}, collection={self.collection!r}, dim={self.dim})"

    def add(
        self,
        vectors: Any,
        keys: Any,
        *,
        ids: Sequence[Any] | None = None,
        paths: Sequence[str | None] | None = None,
        metadata: Any = None,
        batch_size: int = DEFAULT_BATCH,
        progress: bool = False,
    ) -> None:
        """Upsert ``vectors`` ``[n, dim]`` under ``keys``, with their ``ids``, ``paths`` and
        ``metadata`` (a list of dicts or a dict of columns), ``batch_size`` rows per request.

        A key already stored is overwritten (a re-run of the same insert changes nothing).
        """
        x = as_float32(vectors, "vectors", 2)
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors must have D={self.dim} columns like the collection, not {x.shape[1]}")
        n = x.shape[0]
        keys = as_keys(keys, n)
        extra = _metadata_rows(metadata, n)
        for name, column in (("ids", ids), ("paths", paths)):
            if column is not None and len(column) != n:
                raise ValueError(f"got {len(column)} {name} for {n} vectors")
        bar = Progress("milvus insert", n, enabled=progress)
        for start in range(0, n, batch_size):
            rows = []
            for i in range(start, min(start + batch_size, n)):
                row = {"key": int(keys[i]), "vector": x[i], **extra[i]}
                if ids is not None:
                    row["id"] = ids[i].item() if isinstance(ids[i], np.generic) else ids[i]
                if paths is not None and paths[i] is not None:
                    row["path"] = str(paths[i])
                rows.append(row)
            self.client.upsert(self.collection, rows)
            bar.advance(len(rows))
        if n >= batch_size:
            self.client.flush(self.collection)  # seal the bulk insert: Milvus indexes sealed segments

    def remove(self, keys: Any) -> int:
        """Delete the rows of ``keys``; returns the number deleted (unknown keys raise ``KeyError``)."""
        keys = np.unique(as_keys(keys))
        if keys.size == 0:
            return 0
        found = self.client.get(self.collection, ids=keys.tolist(), output_fields=["key"])
        missing = sorted(set(keys.tolist()) - {int(r["key"]) for r in found})
        if missing:
            raise KeyError(f"keys not in the collection: {missing[:5]}")
        self.client.delete(self.collection, ids=keys.tolist())
        return int(keys.size)

    def search(self, vectors: Any, k: int, *, filter: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(distances float32 [M, k], keys int64 [M, k])``, ascending squared L2; a key is -1 (and
        its distance inf) where fewer than ``k`` rows match ``filter``."""
        q = as_float32(vectors, "vectors", 2)
        dist = np.full((q.shape[0], int(k)), np.inf, dtype=np.float32)
        keys = np.full((q.shape[0], int(k)), -1, dtype=np.int64)
        if q.shape[0] == 0:
            return dist, keys
        # Milvus Lite compares a query batch with a whole segment at once (about queries x rows x dim
        # floats): send at most LITE_SEARCH_BYTES of that per request. A server bounds its own memory.
        step = q.shape[0]
        if _local(self.uri):
            step = max(1, LITE_SEARCH_BYTES // (4 * self.dim * max(1, len(self))))
        for start in range(0, q.shape[0], step):
            try:
                hits = self.client.search(
                    self.collection,
                    data=list(q[start : start + step]),
                    limit=int(k),
                    filter=filter or "",
                    output_fields=["key"],
                )
            except Exception as exc:  # noqa: BLE001 - a bad filter expression, mostly
                if filter:
                    raise ValueError(f"Milvus refused the search (filter {filter!r}): {exc}") from None
                raise
            for row, found in enumerate(hits, start):
                for col, hit in enumerate(found):
                    keys[row, col], dist[row, col] = int(hit["key"]), float(hit["distance"])
        return dist, keys

    def describe(self) -> dict[str, Any]:
        """What an index manifest records of this backend."""
        return {"uri": self.uri, "collection": self.collection, "dim": self.dim}

    def save(self, directory: str | Path) -> list[str]:
        """Write ``approximate.milvus.json`` (where the collection is; the rows stay in Milvus)."""
        write_json_atomic(Path(directory) / MILVUS_FILE, self.describe(), sort_keys=True)
        return [MILVUS_FILE]

    @classmethod
    def load(cls, directory: str | Path) -> MilvusIndex:
        """Reopen the collection that :meth:`save` recorded."""
        path = Path(directory) / MILVUS_FILE
        try:
            facts = json.loads(path.read_text(encoding="utf-8"))
            uri, collection, dim = str(facts["uri"]), str(facts["collection"]), int(facts["dim"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"{path} is not a valid Milvus location: {exc}") from None
        opened = cls(uri, collection)
        if opened.dim != dim:
            raise IndexFormatError(f"Milvus collection {collection!r} has dimension {opened.dim}, not {dim}")
        return opened
