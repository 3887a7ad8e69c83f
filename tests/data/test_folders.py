"""Listing and labelling image folders."""

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
