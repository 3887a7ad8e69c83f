"""Fashion-MNIST: the bundled test split, the missing train split, exporting as an image folder."""

import numpy as np
import pytest

from deeprank.data import ImageFolder, export_image_folder, load_fashion_mnist, load_image


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
