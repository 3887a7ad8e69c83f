"""Parquet export: what pyarrow, pandas and DuckDB read back, chunking into files and row groups."""

import sys

import numpy as np
import pytest

from deeprank import Index
from deeprank.cli import main
from deeprank.embedding.parquet import write_parquet
from deeprank.embedding.sharded_run import embed_to_shards
from deeprank.errors import MissingExtraError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def read_parts(folder):
    """The part files read one by one, in name order (independently of dataset discovery)."""
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))])


def test_folder_index_exported_with_ids_paths_labels(grey_checkpoint, mixed_folder, tmp_path):
    index = Index.build(grey_checkpoint, mixed_folder, progress=False, workers=0)
    files = index.export(tmp_path / "out", format="parquet")
    assert [f.name for f in files] == ["part-00000.parquet", "metadata.json"]
    table = pq.read_table(tmp_path / "out" / "embeddings.parquet")  # the folder, as a dataset
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 16)
    assert table.schema.field("id").type == pa.string()
    assert table.column("id").to_pylist() == index.ids
    assert table.column("path").to_pylist() == index.paths
    assert table.column("label").to_pylist() == [i.split("/")[0] for i in index.ids]
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(vectors, index.embeddings)
    frame = __import__("pandas").read_parquet(tmp_path / "out" / "embeddings.parquet")
    np.testing.assert_array_equal(np.stack(frame["vector"].to_numpy()), index.embeddings)


def test_duckdb_reads_the_parts(tmp_path, rng):
    duckdb = pytest.importorskip("duckdb")
    x = rng.standard_normal((30, 4)).astype(np.float32)
    write_parquet(tmp_path, list(range(30)), [None] * 30, x, rows_per_file=8, row_group_rows=3)
    glob = str(tmp_path / "embeddings.parquet" / "*.parquet")
    rows = duckdb.sql(f"SELECT id, vector FROM read_parquet('{glob}') ORDER BY id").fetchall()
    assert [r[0] for r in rows] == list(range(30))
    np.testing.assert_array_equal(np.asarray([r[1] for r in rows], dtype=np.float32), x)
    (n,) = duckdb.sql(f"SELECT count(*) FROM '{glob}' WHERE label IS NULL AND path IS NULL").fetchall()[0]
    assert n == 30


@pytest.mark.parametrize(("n", "per_file", "per_group"), [(20, 7, 3), (20, 20, 20), (1, 5, 5), (9, 1, 1)])
def test_files_and_row_groups(tmp_path, rng, n, per_file, per_group):
    x = rng.standard_normal((n, 3)).astype(np.float32)
    ids = [f"item{i}" for i in range(n)]
    parts = write_parquet(
        tmp_path, ids, [f"/p/{i}.png" for i in range(n)], x, rows_per_file=per_file, row_group_rows=per_group
    )
    assert len(parts) == -(-n // per_file)
    for j, part in enumerate(parts):
        meta = pq.ParquetFile(part).metadata
        rows_in_file = min(per_file, n - j * per_file)
        assert meta.num_rows == rows_in_file
        assert meta.num_row_groups == -(-rows_in_file // per_group)
    table = read_parts(tmp_path / "embeddings.parquet")
    assert table.column("id").to_pylist() == ids
    np.testing.assert_array_equal(np.stack(table.column("vector").to_numpy(zero_copy_only=False)), x)


def test_stale_parts_removed_and_id_types(tmp_path, rng):
    x = rng.standard_normal((10, 2)).astype(np.float32)
    write_parquet(tmp_path, list(range(10)), [None] * 10, x, rows_per_file=3)
    assert len(list((tmp_path / "embeddings.parquet").glob("part-*"))) == 4
    write_parquet(tmp_path, [np.int64(i) for i in range(10)], [None] * 10, x)
    table = read_parts(tmp_path / "embeddings.parquet")
    assert table.num_rows == 10 and table.schema.field("id").type == pa.int64()
    mixed = [*range(5), *"abcde"]
    write_parquet(tmp_path, mixed, [None] * 10, x, labels=["l"] * 10)
    table = read_parts(tmp_path / "embeddings.parquet")
    assert table.column("id").to_pylist() == [str(i) for i in mixed]
    assert table.column("label").to_pylist() == ["l"] * 10
    empty = write_parquet(tmp_path / "e", [], [], np.empty((0, 2), np.float32))
    assert pq.read_table(empty[0]).num_rows == 0


def test_bad_arguments_and_missing_pyarrow(tmp_path, monkeypatch):
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="rows_per_file must be a positive int"):
        write_parquet(tmp_path, [0, 1, 2], [None] * 3, x, rows_per_file=0)
    with pytest.raises(ValueError, match="got 2 ids"):
        write_parquet(tmp_path, [0, 1], [None] * 2, x)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingExtraError, match=r"deeprank\[parquet\]"):
        write_parquet(tmp_path, [0, 1, 2], [None] * 3, x)


def test_shard_run_and_cli_export(grey_checkpoint, mixed_folder, tmp_path, capsys):
    embed_to_shards(grey_checkpoint, mixed_folder, tmp_path / "run", shard_size=10, progress=False)
    run = Index.load(tmp_path / "run")
    run.export(tmp_path / "from_run", format="parquet")
    table = pq.read_table(tmp_path / "from_run" / "embeddings.parquet")
    assert table.column("id").to_pylist() == run.ids
    np.testing.assert_array_equal(
        np.stack(table.column("vector").to_numpy(zero_copy_only=False)), np.asarray(run.embeddings)
    )
    out = tmp_path / "cli"
    code = main(
        [
            "embed",
            "-m",
            str(grey_checkpoint),
            str(mixed_folder),
            "-o",
            str(out),
            "--format",
            "parquet",
            "--no-progress",
            "--workers",
            "0",
        ]
    )
    assert code == 0 and "part-00000.parquet" in capsys.readouterr().out
    assert pq.read_table(out / "embeddings.parquet").column("id").to_pylist() == run.ids
    code = main(["embed", "-m", str(grey_checkpoint), str(mixed_folder), "-o", str(out), "--shard-size", "4"])
    assert code == 2 and "--shard-size only apply with --engine ray" in capsys.readouterr().err
