"""Listing and labelling image folders."""

import os

import pytest
from imagefiles import write_image

from deeprank.data import ImageFolder, UnlabelledFolder, category_of, list_images


def test_list_images_and_folders(tmp_path):
    write_image(tmp_path / "c1" / "x.JPG")
    write_image(tmp_path / "c1" / "sub" / "y.png")
    write_image(tmp_path / "c2" / "z.bmp")
    (tmp_path / "c2" / "notes.txt").write_text("hi")
    write_image(tmp_path / ".hidden" / "h.png")
    assert [p.name for p in list_images(tmp_path)] == ["y.png", "x.JPG", "z.bmp"]  # sorted by path
    folder = ImageFolder(tmp_path)
    assert folder.classes == ["c1", "c2"] and folder.labels.tolist() == [0, 0, 1]
    flat = UnlabelledFolder(tmp_path)
    assert len(flat) == 3 and flat.labels.tolist() == [0, 1, 2]
    with pytest.raises(NotADirectoryError):
        ImageFolder(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="sub-folder"):
        ImageFolder(empty)


def test_category_of_is_the_image_folder_rule(tmp_path):
    write_image(tmp_path / "shoes" / "boots" / "a.png")
    write_image(tmp_path / "bags" / "b.png")
    write_image(tmp_path / "loose.png")
    folder = ImageFolder(tmp_path)
    for path, label in zip(folder.paths, folder.labels, strict=True):
        assert category_of(path.relative_to(tmp_path).as_posix()) == folder.classes[label]
    assert category_of("loose.png") is None and "loose.png" not in [p.name for p in folder.paths]


def _listing(root, **kwargs):
    skipped = []
    with pytest.warns(RuntimeWarning) as record:
        found = list_images(root, skipped=skipped, **kwargs)
    return found, dict(skipped), [str(w.message) for w in record]


def test_links_loops_and_special_files_are_skipped_and_reported(tmp_path):
    root = tmp_path / "root"
    write_image(root / "a" / "x.png")
    write_image(root / "elsewhere" / "deep" / "y.png")
    write_image(tmp_path / "outside" / "z.png")
    os.symlink(tmp_path / "outside", root / "a" / "linked")  # followed: collections are built so
    os.symlink("../elsewhere/deep", root / "a" / "shortcut")  # listed at its real path instead
    os.symlink("..", root / "a" / "loop")  # the root again, from inside itself
    os.symlink("nowhere.png", root / "a" / "gone.png")
    os.symlink("self.png", root / "a" / "self.png")
    os.symlink("missing-folder", root / "a" / "photos")  # maybe a folder of images: said too
    os.mkfifo(root / "a" / "pipe.jpg")
    os.mkfifo(root / "a" / "pipe.txt")  # not an image name: not ours to report
    found, skipped, messages = _listing(root)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "a/linked/z.png", "a/x.png", "elsewhere/deep/y.png",
    ]  # fmt: skip
    assert {os.path.relpath(p, root): r for p, r in skipped.items()} == {
        "a/shortcut": f"the same folder as {root / 'elsewhere' / 'deep'}, listed there",
        "a/loop": "symbolic link loop (a folder inside itself)",
        "a/gone.png": "broken symbolic link",
        "a/self.png": "broken symbolic link",
        "a/photos": "broken symbolic link",
        "a/pipe.jpg": "not a regular file",
    }
    assert len(messages) == 6 and all(m.startswith("skipping ") for m in messages)


def test_a_link_to_a_folder_above_the_listed_one_is_a_loop(tmp_path):
    # Listing "root/sub" must not walk "root" (and "root/sub" again) through sub/up -> "..".
    write_image(tmp_path / "beside" / "other.png")
    write_image(tmp_path / "sub" / "mine.png")
    os.symlink("..", tmp_path / "sub" / "up")
    os.symlink(tmp_path, tmp_path / "sub" / "top")
    found, skipped, _ = _listing(tmp_path / "sub")
    assert [p.name for p in found] == ["mine.png"]
    assert {os.path.basename(p): r for p, r in skipped.items()} == {
        "up": "symbolic link loop (a folder inside itself)",
        "top": "symbolic link loop (a folder inside itself)",
    }


def test_a_real_folder_met_again_through_a_link_is_listed_once(tmp_path):
    # Both orders: the inner folder linked first (then met again as a real folder of the outer
    # one), or the outer folder first (then the link to the inner one is the duplicate).
    write_image(tmp_path / "out" / "x.png")
    write_image(tmp_path / "out" / "in" / "y.png")
    for first, second in (("a", "b"), ("b", "a")):
        root = tmp_path / f"root_{first}"
        root.mkdir()
        os.symlink(tmp_path / "out" / "in", root / first)
        os.symlink(tmp_path / "out", root / second)
        found, skipped, _ = _listing(root)
        assert sorted(p.name for p in found) == ["x.png", "y.png"], first
        assert len(skipped) == 1 and "the same folder as" in next(iter(skipped.values()))


def test_a_tree_of_links_is_walked_once_per_folder(tmp_path):
    # Each level links twice to the next: 2**12 paths, 13 folders. Each folder is listed once.
    for level in range(12):
        write_image(tmp_path / f"d{level}" / "img.png")
        for name in ("x", "y"):
            os.symlink(f"../d{level + 1}", tmp_path / f"d{level}" / name)
    write_image(tmp_path / "d12" / "img.png")
    found, skipped, _ = _listing(tmp_path)
    assert len(found) == 13 and len(skipped) == 24


def test_an_unreadable_sub_folder_is_skipped_and_reported(tmp_path, monkeypatch):
    # The real chmod 000 case runs as an unprivileged user in tests/test_hostile_files.py.
    write_image(tmp_path / "ok" / "a.png")
    write_image(tmp_path / "locked" / "b.png")
    scandir = os.scandir

    def refusing(path):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    found, skipped, _ = _listing(tmp_path)
    assert [p.name for p in found] == ["a.png"]
    assert skipped == {str(tmp_path / "locked"): "folder not readable (Permission denied)"}
    with pytest.warns(RuntimeWarning, match="locked"):
        folder = ImageFolder(tmp_path)
    assert folder.classes == ["ok"] and folder.skipped == list(skipped.items())
    with pytest.raises(PermissionError):
        list_images(tmp_path / "locked")  # the folder asked for itself: an error, not a skip


def test_image_folder_and_unlabelled_folder_record_what_they_skipped(tmp_path):
    write_image(tmp_path / "c1" / "x.png")
    write_image(tmp_path / "c2" / "y.png")
    os.symlink("..", tmp_path / "c2" / "up")
    os.symlink("c1", tmp_path / "c3")  # a second name for a category: listed once
    with pytest.warns(RuntimeWarning):
        folder = ImageFolder(tmp_path)
    assert folder.classes == ["c1", "c2"] and folder.labels.tolist() == [0, 1]
    assert sorted(os.path.relpath(p, tmp_path) for p, _ in folder.skipped) == ["c2/up", "c3"]
    with pytest.warns(RuntimeWarning):
        flat = UnlabelledFolder(tmp_path)
    assert len(flat) == 2 and len(flat.skipped) == 2


def test_non_recursive_listing_does_not_enter_folders(tmp_path):
    write_image(tmp_path / "top.png")
    write_image(tmp_path / "sub" / "inner.png")
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["top.png"]
