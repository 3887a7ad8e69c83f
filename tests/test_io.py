"""deeprank.io: atomic writes leave the old file or the new one, whole; checksums."""

import hashlib
import json
import os
import shutil
import threading
import time

import pytest
from crash import every_kill

from deeprank.io import (
    atomic_path,
    exchange_paths,
    exclusive_lock,
    fsync_tree,
    replace_directory,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


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


def make_folder(path, text):
    path.mkdir()
    (path / "a.txt").write_text(text)
    (path / "sub").mkdir()
    (path / "sub" / "b.txt").write_text(text * 2)
    return path


def read_folder(path):
    return (path / "a.txt").read_text(), (path / "sub" / "b.txt").read_text()


def test_fsync_tree_flushes_nested_folders(tmp_path):
    fsync_tree(make_folder(tmp_path / "f", "x"))  # no error on files and folders alike


def test_exchange_paths_swaps_two_folders_or_says_it_cannot(tmp_path):
    a, b = make_folder(tmp_path / "a", "A"), make_folder(tmp_path / "b", "B")
    if not exchange_paths(a, b):
        pytest.skip("this system cannot exchange paths atomically")
    assert read_folder(a) == ("B", "BB") and read_folder(b) == ("A", "AA")
    with pytest.raises(OSError):
        exchange_paths(a, tmp_path / "missing")


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_directory_puts_the_new_folder_in_whole(tmp_path, monkeypatch, exchange):
    if not exchange:  # the fallback for systems without an atomic exchange
        monkeypatch.setattr("deeprank.io.exchange_paths", lambda a, b: False)
    target = tmp_path / "out"
    replace_directory(make_folder(tmp_path / ".new1", "old"), target)  # nothing there yet
    replace_directory(make_folder(tmp_path / ".new2", "new"), target)
    assert read_folder(target) == ("new", "newnew")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_kill_at_any_step_of_replace_directory_leaves_a_whole_folder(tmp_path):
    target = make_folder(tmp_path / "out", "old")

    def write():
        replace_directory(make_folder(tmp_path / ".new", "new"), target)

    def check(step):
        assert read_folder(target) in (("old", "oldold"), ("new", "newnew")), step
        for p in tmp_path.iterdir():  # what a killed writer left, removed as the next writer would
            if p.name != "out":
                shutil.rmtree(p)

    if not exchange_paths(make_folder(tmp_path / "x", "x"), make_folder(tmp_path / "y", "y")):
        pytest.skip("without an atomic exchange a kill between the two renames leaves TARGET.old only")
    check(0)
    assert every_kill(write, check) >= 2


def test_exclusive_lock_keeps_writers_apart(tmp_path):
    lock, order = tmp_path / ".lock", []

    def writer(name):
        with exclusive_lock(lock):
            order.append(f"{name} in")
            time.sleep(0.05)
            order.append(f"{name} out")

    threads = [threading.Thread(target=writer, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])
