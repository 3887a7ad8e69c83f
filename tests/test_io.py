"""deeprank.io: atomic writes leave the old file or the new one, whole; checksums."""

import hashlib
import json
import os

import pytest

from deeprank.io import atomic_path, sha256_file, write_bytes_atomic, write_json_atomic, write_text_atomic


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_writes_create_parents_and_replace_whole_files(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    write_bytes_atomic(target, b"old")
    write_bytes_atomic(target, b"new content")
    assert target.read_bytes() == b"new content"
    write_text_atomic(tmp_path / "t.txt", "h\u00e9llo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "h\u00e9llo"
    write_json_atomic(tmp_path / "j.json", {"x": [1, 2]}, sort_keys=True)
    assert json.loads((tmp_path / "j.json").read_text()) == {"x": [1, 2]}
    assert (tmp_path / "j.json").read_text().endswith("\n")
    assert _leftovers(tmp_path) == [] and _leftovers(target.parent) == []


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and _leftovers(tmp_path) == []
    with pytest.raises(TypeError):
        write_json_atomic(target, {"not json": object()})
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_a_writer_killed_before_the_rename_leaves_the_old_file(tmp_path):
    target = tmp_path / "state.bin"
    write_bytes_atomic(target, b"old")
    pid = os.fork()
    if pid == 0:  # the child dies (as under kill -9) in the middle of writing the new content
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            os._exit(1)
    os.waitpid(pid, 0)
    assert target.read_bytes() == b"old"
    assert len(_leftovers(tmp_path)) == 1  # only a hidden temporary remains, never a half target


def test_sha256_matches_hashlib_on_files_larger_than_a_block(tmp_path, rng):
    data = rng.integers(0, 256, (5 << 20) + 17, dtype="uint8").tobytes()
    path = tmp_path / "big"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
