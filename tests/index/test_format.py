"""The index directory format: pointer + versioned folders, checksums over every byte, atomic saves
(readers during saves, kills at every step, stale leftovers), and reading version 1 directories."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest
from crash import every_kill

from deeprank.errors import DeeprankError, IndexFormatError
from deeprank.index import format as fmt
from deeprank.io import sha256_file


def manifest(count=3):
    return fmt.new_manifest(
        2, count, config_hash="abc", config={"preset": "small"}, checkpoint=None, weights_hash="f" * 64
    )


def fill_with(ids):
    def fill(folder):
        (folder / fmt.EMBEDDINGS).write_bytes(b"vectors" * len(ids))
        return [fmt.EMBEDDINGS, fmt.write_items(folder, ids, ["/x/a.png"] + [None] * (len(ids) - 1))]

    return fill


fill = fill_with(["a", "b", 7])


@pytest.fixture
def saved(tmp_path):
    return fmt.save_directory(tmp_path / "idx", manifest(), fill)


def folder_of(root):
    return root / json.loads((root / fmt.POINTER).read_text())["directory"]


def edit_manifest(root, change):
    """Change the manifest and re-sign it in the pointer (what a careful forger would do)."""
    folder = folder_of(root)
    m = json.loads((folder / fmt.MANIFEST).read_text())
    change(m)
    data = json.dumps(m).encode()
    (folder / fmt.MANIFEST).write_bytes(data)
    (root / fmt.POINTER).write_bytes(fmt._pointer_bytes(folder.name, hashlib.sha256(data).hexdigest()))


def test_layout_pointer_and_checksummed_manifest(saved):
    names = sorted(p.name for p in saved.iterdir())
    assert names == [".lock", "current", "v000001"]
    pointer = json.loads((saved / "current").read_text())
    m_file = saved / "v000001" / fmt.MANIFEST
    assert pointer == {
        "format": "deeprank-index",
        "version": 2,
        "directory": "v000001",
        "manifest_sha256": sha256_file(m_file),
    }
    m = fmt.read_manifest(saved)
    assert (m["format"], m["version"], m["dim"], m["count"]) == ("deeprank-index", 2, 2, 3)
    assert (m["dtype"], m["metric"], m["model"]["config_hash"]) == ("float32", "sqeuclidean", "abc")
    assert m["model"]["weights_hash"] == "f" * 64
    assert m["backends"] == {"exact": {"backend": "flat"}, "approximate": None}
    assert list(m["files"]) == ["embeddings.npy", "items.json"]
    for name, facts in m["files"].items():
        f = saved / "v000001" / name
        assert facts == {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    assert fmt.read_items(saved / "v000001") == (["a", "b", 7], ["/x/a.png", None, None])
    assert sorted(p.name for p in saved.parent.iterdir()) == ["idx"]  # nothing beside it


def test_a_new_save_keeps_the_previous_version_and_removes_older_ones(saved):
    for ids in (["z"], ["y", "x"], ["w"]):
        fmt.save_directory(saved, manifest(len(ids)), fill_with(ids))
    assert sorted(p.name for p in saved.iterdir()) == [".lock", "current", "v000003", "v000004"]
    assert fmt.read_index(saved, lambda folder, m: fmt.read_items(folder)[0]) == ["w"]


def test_items_without_paths_store_null(tmp_path):
    fmt.write_items(tmp_path, [1, 2], [None, None])
    assert json.loads((tmp_path / fmt.ITEMS).read_text()) == {"ids": [1, 2], "paths": None}
    assert fmt.read_items(tmp_path) == ([1, 2], None)
    (tmp_path / fmt.ITEMS).write_text('{"paths": []}')
    with pytest.raises(IndexFormatError, match="items.json is corrupt"):
        fmt.read_items(tmp_path)


def test_truncated_file(saved):
    f = folder_of(saved) / fmt.EMBEDDINGS
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(IndexFormatError, match="truncated"):
        fmt.read_manifest(saved, verify=False)  # sizes are checked even without checksums


def test_corrupt_checksum(saved):
    f = folder_of(saved) / fmt.EMBEDDINGS
    data = bytearray(f.read_bytes())
    data[0] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="checksum"):
        fmt.read_manifest(saved)
    assert fmt.read_manifest(saved, verify=False)["count"] == 3


@pytest.mark.parametrize("name", ["current", "manifest.json", "items.json"])
def test_every_single_byte_flip_is_refused(saved, name):
    """Every byte of the pointer, the manifest and items.json is covered by a check."""
    path = saved / name if name == "current" else folder_of(saved) / name
    original = path.read_bytes()
    accepted = []
    for i in range(len(original)):
        for flip in (0x01, 0x20, 0xFF):  # a low bit, ASCII case, every bit
            data = bytearray(original)
            data[i] ^= flip
            path.write_bytes(bytes(data))
            try:
                fmt.read_index(saved, lambda folder, m: fmt.read_items(folder))
            except (IndexFormatError, OSError):
                continue
            accepted.append((i, flip))
    path.write_bytes(original)
    assert accepted == [], f"{len(accepted)} of {3 * len(original)} flips of {name} were accepted"
    assert fmt.read_manifest(saved)["count"] == 3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(version=3), "format version 3; this deeprank reads versions 1, 2"),
        (lambda m: m.pop("version"), "format version None"),
        (lambda m: m.update(format="other"), "not a deeprank index manifest"),
        (lambda m: m.pop("dim"), "lacks a valid field"),
        (lambda m: m.update(count="many"), "lacks a valid field"),
        (lambda m: m["files"].pop("items.json"), "does not list items.json"),
        (lambda m: m["files"].update({"extra.bin": {"bytes": 1, "sha256": "0"}}), "missing extra.bin"),
        (lambda m: m["files"].update({"../x": {"bytes": 1, "sha256": "0"}}), "lists '../x' oddly"),
    ],
)
def test_manifest_mismatches(saved, change, message):
    edit_manifest(saved, change)
    with pytest.raises(IndexFormatError, match=message):
        fmt.read_manifest(saved)


def test_missing_or_garbage_pointer(saved, tmp_path):
    with pytest.raises(FileNotFoundError):
        fmt.read_manifest(tmp_path / "nope")
    with pytest.raises(IndexFormatError, match="no current or manifest.json"):
        fmt.read_manifest(tmp_path)
    pointer = (saved / "current").read_bytes()
    for text, message in [
        (b"{not json", "current is corrupt"),
        (b"[1, 2]", "not a deeprank index pointer"),
        (pointer.replace(b'"version":2', b'"version":9'), "format version 9"),
        (pointer.replace(b"v000001", b"../../x"), "unexpected fields"),
        (pointer.replace(b"v000001", b"v000002"), "missing v000002/manifest.json"),
        (pointer.replace(b'","manifest', b'", "manifest'), "not in the form deeprank writes"),
    ]:
        (saved / "current").write_bytes(text)
        with pytest.raises(IndexFormatError, match=message):
            fmt.read_manifest(saved)


def test_save_replaces_an_index_but_nothing_else(saved, tmp_path):
    fmt.save_directory(saved, manifest(1), fill_with(["z"]))
    assert fmt.read_manifest(saved)["count"] == 1
    with pytest.raises(DeeprankError, match="already exists"):
        fmt.save_directory(saved, manifest(), fill, overwrite=False)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(DeeprankError, match="not a deeprank index"):
        fmt.save_directory(tmp_path / "photos", manifest(), fill)
    assert (tmp_path / "photos" / "cat.jpg").exists()
    (saved / "notes.txt").write_text("mine")  # a user's file inside an index: not ours to delete
    with pytest.raises(DeeprankError, match="not a deeprank index"):
        fmt.save_directory(saved, manifest(), fill)
    (tmp_path / "empty").mkdir()
    fmt.save_directory(tmp_path / "empty", manifest(), fill)  # an empty folder may be used
    assert fmt.read_manifest(tmp_path / "empty")["count"] == 3


def test_a_failed_save_leaves_the_old_index(saved):
    before = fmt.read_manifest(saved)

    def broken(folder):
        fill(folder)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        fmt.save_directory(saved, manifest(), broken)
    assert fmt.read_manifest(saved) == before
    assert sorted(p.name for p in saved.iterdir()) == [".lock", "current", "v000001"]


def test_stale_leftovers_are_cleaned_by_the_next_save(saved):
    (saved / ".v000007.k3j_x9.tmp").mkdir()  # a save killed while writing its folder
    (saved / ".v000007.k3j_x9.tmp" / fmt.EMBEDDINGS).write_bytes(b"half")
    (saved / ".current.a8f_2z.tmp").write_bytes(b"{")  # ... or while writing the pointer
    (saved / "v000005").mkdir()  # ... or after renaming its folder, before the pointer
    assert fmt.read_manifest(saved)["count"] == 3  # none of it is read
    fmt.save_directory(saved, manifest(1), fill_with(["z"]))
    assert sorted(p.name for p in saved.iterdir()) == [".lock", "current", "v000001", "v000002"]


def test_readers_never_fail_during_repeated_saves(saved):
    """A reader looping loads while a writer saves over and over sees an index, whole, every time.
    (The version 1 save, rename aside then rename in, failed about half of such loads.)"""
    stop = threading.Event()
    loads, failures = [0], []

    def reader():
        while not stop.is_set():
            try:
                ids = fmt.read_index(saved, lambda folder, m: fmt.read_items(folder)[0])
                assert ids in (["a", "b", 7], ["z"]), ids
                loads[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                failures.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    end, saves = time.monotonic() + 1.5, 0
    while time.monotonic() < end:
        ids = ["z"] if saves % 2 else ["a", "b", 7]
        fmt.save_directory(saved, manifest(len(ids)), fill_with(ids))
        saves += 1
    stop.set()
    thread.join()
    assert loads[0] > 5 and saves > 5
    assert failures == [], f"{len(failures)} of {loads[0] + len(failures)} loads failed: {failures[:3]}"


def test_a_writer_killed_at_any_step_leaves_the_old_or_the_new_index(saved):
    def write():
        fmt.save_directory(saved, manifest(1), fill_with(["z"]))

    seen = set()

    def check(step):
        ids = fmt.read_index(saved, lambda folder, m: fmt.read_items(folder)[0])
        assert ids in (["a", "b", 7], ["z"]), f"killed at step {step}: {ids}"
        seen.add(tuple(map(str, ids)))
        # the next save completes and cleans whatever the killed one left
        fmt.save_directory(saved, manifest(3), fill)
        assert len([p for p in saved.iterdir() if p.name.startswith(".v")]) == 0

    steps = every_kill(write, check)
    assert steps >= 8 and seen == {("a", "b", "7"), ("z",)}  # both outcomes happen


def write_version_1(root, ids=("a", "b")):
    """A version 1 directory as deeprank 0.1 wrote it (files directly in ``root``)."""
    root.mkdir()
    (root / fmt.EMBEDDINGS).write_bytes(b"v1 vectors")
    fmt.write_items(root, list(ids), [None] * len(ids))
    files = {n: {"bytes": (root / n).stat().st_size, "sha256": sha256_file(root / n)} for n in fmt.REQUIRED}
    m = {"format": "deeprank-index", "version": 1, "dim": 2, "count": len(ids), "files": files, "model": None}
    (root / fmt.MANIFEST).write_text(json.dumps(m))
    return root


def test_version_1_is_read_and_a_save_over_it_turns_it_into_version_2(tmp_path):
    old = write_version_1(tmp_path / "old")
    assert fmt.read_manifest(old)["version"] == 1
    assert fmt.read_index(old, lambda folder, m: fmt.read_items(folder)[0]) == ["a", "b"]
    (old / fmt.EMBEDDINGS).write_bytes(b"v1 vectorz")
    with pytest.raises(IndexFormatError, match="checksum"):
        fmt.read_manifest(old)
    (old / fmt.EMBEDDINGS).write_bytes(b"v1 vectors")
    fmt.save_directory(old, manifest(), fill)
    assert sorted(p.name for p in old.iterdir()) == [".lock", "current", "v000001"]
    assert fmt.read_manifest(old)["version"] == 2


def test_a_kill_while_replacing_version_1_leaves_one_of_them(tmp_path):
    old = write_version_1(tmp_path / "old")

    def check(step):
        ids = fmt.read_index(old, lambda folder, m: fmt.read_items(folder)[0])
        assert ids in (["a", "b"], ["a", "b", 7]), f"killed at step {step}: {ids}"

    every_kill(lambda: fmt.save_directory(old, manifest(), fill), check)
