"""Data: bundled Fashion-MNIST, folders, triplet CSV, image loading, augmentation."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from deeprank.data import (
    ImageFolder,
    ImageStore,
    UnlabelledFolder,
    UnreadableImage,
    augmented_view,
    export_image_folder,
    list_images,
    load_fashion_mnist,
    load_image,
    random_shift,
    read_triplet_csv,
)


def test_bundled_fashion_mnist_test_split():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10
    assert images.flags.writeable


def test_missing_train_split_explains_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")


def test_export_then_read_image_folder(tmp_path):
    images, labels = load_fashion_mnist("test")
    paths = export_image_folder(images[:30], labels[:30], tmp_path / "fm")
    folder = ImageFolder(tmp_path / "fm")
    assert len(folder) == 30 and len(folder.classes) == len(set(labels[:30].tolist()))
    # labels map back to the exported classes and pixels survive the PNG round trip
    by_path = {p: i for i, p in enumerate(paths)}
    for path, label in zip(folder.paths, folder.labels, strict=True):
        i = by_path[path]
        assert folder.classes[label] == path.parent.name
        tensor = load_image(path, 28, 1)
        np.testing.assert_array_equal((tensor[0].numpy() * 255).round().astype(np.uint8), images[i])


def _write(path, size=(20, 16), color=(200, 10, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def test_load_image_shapes_modes_and_errors(tmp_path):
    rgb = _write(tmp_path / "a.png")
    out = load_image(rgb, 32, 3)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    torch.testing.assert_close(out[:, 5, 5], torch.tensor([200, 10, 10]) / 255.0)
    gray = load_image(rgb, 16, 1)
    assert gray.shape == (1, 16, 16)
    rgba = _write(tmp_path / "t.png", color=(0, 0, 0, 0), mode="RGBA")
    torch.testing.assert_close(load_image(rgba, 8, 3), torch.ones(3, 8, 8))  # transparency on white
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UnreadableImage, match="broken.jpg"):
        load_image(broken, 8, 3)
    with pytest.raises(ValueError, match="missing.png"):
        load_image(tmp_path / "missing.png", 8, 3)


def test_truncated_image_is_unreadable(tmp_path):
    path = _write(tmp_path / "full.jpg", size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage):
        load_image(path, 8, 3)


def test_list_images_and_folders(tmp_path):
    _write(tmp_path / "c1" / "x.JPG")
    _write(tmp_path / "c1" / "sub" / "y.png")
    _write(tmp_path / "c2" / "z.bmp")
    (tmp_path / "c2" / "notes.txt").write_text("hi")
    _write(tmp_path / ".hidden" / "h.png")
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


def test_triplet_csv_with_and_without_header(tmp_path):
    (tmp_path / "h.csv").write_text(
        "anchor,positive,negative\nq.jpg,p.jpg,n.jpg\n\n/abs/q.jpg,p2.jpg,n2.jpg\n"
    )
    rows = read_triplet_csv(tmp_path / "h.csv")
    assert rows[0] == (tmp_path / "q.jpg", tmp_path / "p.jpg", tmp_path / "n.jpg")
    assert str(rows[1][0]) == "/abs/q.jpg"
    (tmp_path / "reordered.csv").write_text("negative,Query,positive\nn.jpg,q.jpg,p.jpg\n")
    assert read_triplet_csv(tmp_path / "reordered.csv")[0] == rows[0]
    (tmp_path / "plain.csv").write_text("q.jpg,p.jpg,n.jpg\n")
    assert read_triplet_csv(tmp_path / "plain.csv") == rows[:1]
    (tmp_path / "bad.csv").write_text("q.jpg,p.jpg,n.jpg\nq.jpg,p.jpg\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        read_triplet_csv(tmp_path / "bad.csv")


def test_random_shift_moves_content_and_repeats_under_seed():
    x = torch.zeros(64, 1, 9, 9, dtype=torch.uint8)
    x[:, :, 4, 4] = 255
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    again = random_shift(x, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)
    # every image keeps its single bright pixel, moved by at most 2 in each direction
    positions = set()
    for img in out[:, 0]:
        ys, xs = torch.nonzero(img == 255, as_tuple=True)
        assert len(ys) == 1 and abs(int(ys[0]) - 4) <= 2 and abs(int(xs[0]) - 4) <= 2
        positions.add((int(ys[0]), int(xs[0])))
    assert len(positions) > 10  # offsets differ per image
    assert random_shift(x, 0) is x
    floats = random_shift(x.float() / 255, 1, torch.Generator().manual_seed(1))
    assert floats.dtype == torch.float32


def test_random_shift_matches_a_loop_reference():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(5, 3, 7, 6)
    out = random_shift(x, 2, gen)
    offsets = torch.randint(0, 5, (2, 5), generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(5):
        oy, ox = int(offsets[0, i]), int(offsets[1, i])
        torch.testing.assert_close(out[i], padded[i, :, oy : oy + 7, ox : ox + 6])


def test_augmented_view_is_a_changed_crop(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8))
    a = augmented_view(image, 32, 3, random.Random(1))
    b = augmented_view(image, 32, 3, random.Random(1))
    c = augmented_view(image, 32, 3, random.Random(2))
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_image_store_caches_and_flags_bad_files(tmp_path):
    good = _write(tmp_path / "g.png")
    bad = tmp_path / "b.png"
    bad.write_bytes(b"nope")
    store = ImageStore([good, bad], 8, 3, max_bytes=10_000)
    first = store.get(0)
    assert first.dtype == torch.uint8 and store.get(0) is first
    with pytest.raises(UnreadableImage):
        store.get(1)
    assert store.bad == {1}
