"""The index directory format: manifest writing and checks (truncation, checksums, versions), atomic save."""

from __future__ import annotations

import json

import pytest

from deeprank.errors import DeeprankError, IndexFormatError
from deeprank.index import format as fmt
from deeprank.io import sha256_file


def manifest():
    return fmt.new_manifest(2, 3, config_hash="abc", config={"preset": "small"}, checkpoint=None)


def fill(tmp):
    (tmp / fmt.EMBEDDINGS).write_bytes(b"vectors" * 10)
    return [fmt.EMBEDDINGS, fmt.write_items(tmp, ["a", "b", 7], ["/x/a.png", None, None])]


@pytest.fixture
def saved(tmp_path):
    return fmt.save_directory(tmp_path / "idx", manifest(), fill)


def edit_manifest(root, change):
    m = json.loads((root / fmt.MANIFEST).read_text())
    change(m)
    (root / fmt.MANIFEST).write_text(json.dumps(m))


def test_save_writes_checksummed_manifest(saved):
    m = fmt.read_manifest(saved)
    assert (m["format"], m["version"], m["dim"], m["count"]) == ("deeprank-index", 1, 2, 3)
    assert (m["dtype"], m["metric"], m["model"]["config_hash"]) == ("float32", "sqeuclidean", "abc")
    assert list(m["files"]) == ["embeddings.npy", "items.json"]
    for name, facts in m["files"].items():
        assert facts == {"bytes": (saved / name).stat().st_size, "sha256": sha256_file(saved / name)}
    assert fmt.read_items(saved) == (["a", "b", 7], ["/x/a.png", None, None])
    assert sorted(p.name for p in saved.parent.iterdir()) == ["idx"]  # no temporary folders left


def test_items_without_paths_store_null(tmp_path):
    fmt.write_items(tmp_path, [1, 2], [None, None])
    assert json.loads((tmp_path / fmt.ITEMS).read_text()) == {"ids": [1, 2], "paths": None}
    assert fmt.read_items(tmp_path) == ([1, 2], None)
    (tmp_path / fmt.ITEMS).write_text('{"paths": []}')
    with pytest.raises(IndexFormatError, match="items.json is corrupt"):
        fmt.read_items(tmp_path)


def test_truncated_file(saved):
    f = saved / fmt.EMBEDDINGS
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(IndexFormatError, match="truncated"):
        fmt.read_manifest(saved, verify=False)  # sizes are checked even without checksums


def test_corrupt_checksum(saved):
    f = saved / fmt.EMBEDDINGS
    data = bytearray(f.read_bytes())
    data[0] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="checksum"):
        fmt.read_manifest(saved)
    assert fmt.read_manifest(saved, verify=False)["count"] == 3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(version=2), "format version 2; this deeprank reads version 1"),
        (lambda m: m.pop("version"), "format version None"),
        (lambda m: m.update(format="other"), "not a deeprank index manifest"),
        (lambda m: m.pop("dim"), "lacks a valid field"),
        (lambda m: m.update(count="many"), "lacks a valid field"),
        (lambda m: m["files"].pop("items.json"), "does not list items.json"),
        (lambda m: m["files"].update({"extra.bin": {"bytes": 1, "sha256": "0"}}), "missing extra.bin"),
    ],
)
def test_manifest_mismatches(saved, change, message):
    edit_manifest(saved, change)
    with pytest.raises(IndexFormatError, match=message):
        fmt.read_manifest(saved)


def test_missing_or_garbage_manifest(saved, tmp_path):
    with pytest.raises(FileNotFoundError):
        fmt.read_manifest(tmp_path / "nope")
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        fmt.read_manifest(tmp_path)
    (saved / fmt.MANIFEST).write_text("{not json")
    with pytest.raises(IndexFormatError, match="corrupt"):
        fmt.read_manifest(saved)
    (saved / fmt.MANIFEST).write_text("[1, 2]")
    with pytest.raises(IndexFormatError, match="not a deeprank index manifest"):
        fmt.read_manifest(saved)


def test_save_replaces_an_index_but_nothing_else(saved, tmp_path):
    def fill_other(tmp):
        (tmp / fmt.EMBEDDINGS).write_bytes(b"other")
        return [fmt.EMBEDDINGS, fmt.write_items(tmp, ["z"], [None])]

    fmt.save_directory(
        saved, fmt.new_manifest(2, 1, config_hash=None, config=None, checkpoint=None), fill_other
    )
    assert fmt.read_manifest(saved)["count"] == 1 and fmt.read_items(saved) == (["z"], None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    with pytest.raises(DeeprankError, match="already exists"):
        fmt.save_directory(saved, manifest(), fill, overwrite=False)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(DeeprankError, match="not a deeprank index"):
        fmt.save_directory(tmp_path / "photos", manifest(), fill)
    assert (tmp_path / "photos" / "cat.jpg").exists()
    (tmp_path / "empty").mkdir()
    fmt.save_directory(tmp_path / "empty", manifest(), fill)  # an empty folder may be used
    assert fmt.read_manifest(tmp_path / "empty")["count"] == 3


def test_a_failed_save_leaves_the_old_index(saved, tmp_path):
    before = (saved / fmt.MANIFEST).read_bytes()

    def broken(tmp):
        fill(tmp)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        fmt.save_directory(saved, manifest(), broken)
    assert (saved / fmt.MANIFEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # the temporary directory is gone
