"""Every input kind -> decoded images: image folders, triplet CSV files, unlabelled folders, Fashion-MNIST,
Hugging Face datasets on disk and WebDataset shards.

- :mod:`.images`: the one decode + resize path (files, PIL images, arrays), its pixel limit and
  unreadable-file handling.
- :mod:`.folders`: listing and labelling image folders; :mod:`.triplet_csv`: triplet CSV files.
- :mod:`.store`: decoded images kept in memory up to a budget, for training.
- :mod:`.augment`: pixel shifts, instance views, crops as queries.
- :mod:`.fashion_mnist`: the bundled test split and the Debian package's train split.
- :mod:`.records`: images as encoded bytes in a container, decoded by the one path;
  :mod:`.hf` (``hf:PATH``: ``save_to_disk`` folders, ``.arrow``, ``.parquet``) and
  :mod:`.webdataset` (``.tar`` shards of ``KEY.jpg`` + ``KEY.cls``) list them.
"""

from __future__ import annotations

from .augment import augmented_view, random_crops, random_shift
from .fashion_mnist import CLASS_NAMES, export_image_folder, load_fashion_mnist, read_idx
from .folders import IMAGE_EXTENSIONS, ImageFolder, UnlabelledFolder, category_of, list_images
from .images import (
    ImageTooLarge,
    NotAnImage,
    SkippedImages,
    UnreadableImage,
    array_images,
    decode_image,
    image_tensor,
    load_image,
    max_image_pixels,
    open_image,
    resize,
)
from .store import ImageStore
from .triplet_csv import read_triplet_csv

__all__ = [
    "CLASS_NAMES",
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "ImageStore",
    "ImageTooLarge",
    "NotAnImage",
    "SkippedImages",
    "UnlabelledFolder",
    "UnreadableImage",
    "array_images",
    "augmented_view",
    "category_of",
    "decode_image",
    "export_image_folder",
    "image_tensor",
    "list_images",
    "load_fashion_mnist",
    "load_image",
    "max_image_pixels",
    "open_image",
    "random_crops",
    "random_shift",
    "read_idx",
    "read_triplet_csv",
    "resize",
]
