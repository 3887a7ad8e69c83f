"""Data: the bundled Fashion-MNIST, image folders, triplet CSV files, unlabelled folders, transforms."""

from __future__ import annotations

from .fashion_mnist import CLASS_NAMES, export_image_folder, load_fashion_mnist, read_idx
from .folders import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    ImageStore,
    UnlabelledFolder,
    list_images,
    read_triplet_csv,
)
from .transforms import (
    SkippedImages,
    UnreadableImage,
    augmented_view,
    load_image,
    random_shift,
)

__all__ = [
    "CLASS_NAMES",
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "ImageStore",
    "SkippedImages",
    "UnlabelledFolder",
    "UnreadableImage",
    "augmented_view",
    "export_image_folder",
    "list_images",
    "load_fashion_mnist",
    "load_image",
    "random_shift",
    "read_idx",
    "read_triplet_csv",
]
