"""Embeddings as Parquet, the table format pyarrow, pandas, DuckDB, Spark and Polars read directly.

:func:`write_parquet` writes a folder ``embeddings.parquet/`` of part files (``part-00000.parquet``,
... of at most ``rows_per_file`` rows, in row groups of ``row_group_rows``), one row per item::

    id      int64 when every id is an int, else string (int ids written as text)
    path    string, null for items added as vectors
    label   string, null when unknown: by default the category of an image (its first folder under the
            collection root, :func:`deeprank.data.folders.category_of`)
    vector  fixed_size_list<float32>[dim]  (DuckDB: FLOAT[dim]; pandas: a numpy array per row)

Read it with ``pandas.read_parquet("out/embeddings.parquet")``, ``pyarrow.parquet.read_table(...)``
or ``SELECT * FROM 'out/embeddings.parquet/*.parquet'`` in DuckDB. Memory: one row group at a time
(``row_group_rows x dim`` floats, twice), whatever the collection's size; rows are read from
``vectors`` by slices, so a memory map or sharded vectors stream from disk. Each part is written
atomically (:mod:`deeprank.io`); parts left from an earlier, larger export are removed.
Needs ``pyarrow`` (``pip install "deeprank[parquet]"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.folders import category_of
from ..errors import MissingExtraError
from ..io import atomic_path, fsync_dir

__all__ = ["PARQUET_DIR", "write_parquet"]

PARQUET_DIR = "embeddings.parquet"
ROWS_PER_FILE = 1 << 20
ROW_GROUP_ROWS = 1 << 16


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingExtraError(
            f"Parquet export needs pyarrow: pip install 'deeprank[parquet]' ({exc})"
        ) from None
    return pa, pq


def default_labels(ids: Sequence[Any], paths: Sequence[str | None]) -> list[str | None]:
    """The category of each image item (ids are paths under the collection root); None otherwise."""
    return [
        category_of(i) if p is not None and isinstance(i, str) else None
        for i, p in zip(ids, paths, strict=True)
    ]


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _table(pa: Any, schema: Any, ids: Sequence, paths: Sequence, labels: Sequence, vectors: Any) -> Any:
    """One row group's rows as an Arrow table of ``schema``."""
    block = np.ascontiguousarray(vectors, dtype=np.float32)
    id_type = schema.field("id").type
    columns = [
        pa.array([int(i) if pa.types.is_integer(id_type) else str(i) for i in ids], type=id_type),
        pa.array(list(paths), type=pa.string()),
        pa.array(list(labels), type=pa.string()),
        pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1), type=pa.float32()), block.shape[1]),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def write_parquet(
    output: str | os.PathLike,
    ids: Sequence[Any],
    paths: Sequence[str | None],
    vectors: Any,
    *,
    labels: Sequence[str | None] | None = None,
    rows_per_file: int = ROWS_PER_FILE,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> list[Path]:
    """Write ``output/embeddings.parquet/part-*.parquet`` (module docstring); returns the part files.

    ``vectors`` is float32 ``[n, dim]`` or anything sliced by rows into such arrays (a memory map,
    :class:`deeprank.index.shards.ShardedVectors`); ``ids``, ``paths`` and ``labels`` have ``n`` entries.
    """
    pa, pq = _pyarrow()
    n, dim = int(vectors.shape[0]), int(vectors.shape[1])
    _positive(rows_per_file, "rows_per_file")
    _positive(row_group_rows, "row_group_rows")
    labels = default_labels(ids, paths) if labels is None else list(labels)
    if not len(ids) == len(paths) == len(labels) == n:
        raise ValueError(f"got {len(ids)} ids, {len(paths)} paths and {len(labels)} labels for {n} vectors")
    int_ids = all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids)
    schema = pa.schema(
        [
            ("id", pa.int64() if int_ids else pa.string()),
            ("path", pa.string()),
            ("label", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )
    folder = Path(output) / PARQUET_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for part, first in enumerate(range(0, max(n, 1), rows_per_file)):  # an empty collection: one empty part
        target = folder / f"part-{part:05d}.parquet"
        with atomic_path(target) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for start in range(first, min(first + rows_per_file, n), row_group_rows):
                rows = slice(start, min(start + row_group_rows, first + rows_per_file, n))
                table = _table(pa, schema, ids[rows], paths[rows], labels[rows], vectors[rows])
                writer.write_table(table, row_group_size=row_group_rows)
        written.append(target)
    for stale in folder.glob("part-*.parquet"):
        if stale not in written:
            stale.unlink()
    fsync_dir(folder)
    return written
