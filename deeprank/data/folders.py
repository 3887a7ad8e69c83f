"""Readers for the inputs users have: image folders, triplet CSV files, unlabelled folders.

* :class:`ImageFolder`: one sub-folder per category (``root/<category>/**/<image>``).
* :func:`read_triplet_csv`: rows ``query,positive,negative`` (header optional, ``anchor`` accepted for
  ``query``); relative paths are taken relative to the CSV file's folder.
* :class:`UnlabelledFolder`: every image is its own instance (the applied report's client data).
* :class:`ImageStore`: decodes images on demand to uint8 tensors and keeps them in memory up to a
  budget; unreadable files raise :class:`~deeprank.data.transforms.UnreadableImage`.
"""

from __future__ import annotations

import csv
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .transforms import UnreadableImage, open_image, pil_to_tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "ImageStore",
    "UnlabelledFolder",
    "list_images",
    "read_triplet_csv",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image files (by extension, case-insensitive) under ``folder``, sorted; hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"image folder not found: {folder}")
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    found = [
        p
        for p in pattern
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found)


class ImageFolder:
    """Images in one sub-folder per category.

    Attributes: ``root``, ``classes`` (sorted sub-folder names), ``paths`` (list of ``Path``),
    ``labels`` (``int64 [N]``, index into ``classes``). Images directly in ``root`` are ignored.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotADirectoryError(f"image folder not found: {self.root}")
        subfolders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        paths: list[Path] = []
        labels: list[int] = []
        classes: list[str] = []
        for folder in subfolders:
            images = list_images(folder)
            if not images:
                continue
            classes.append(folder.name)
            paths += images
            labels += [len(classes) - 1] * len(images)
        if not paths:
            raise ValueError(
                f"{self.root} holds no images in sub-folders; expected one sub-folder per category "
                "(use an unlabelled folder for flat collections)"
            )
        self.classes = classes
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)


class UnlabelledFolder:
    """Every image under ``root`` is its own instance (``labels`` = ``0..N-1``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.paths = list_images(self.root)
        if len(self.paths) < 2:
            raise ValueError(f"{self.root} must hold at least 2 images for instance training")
        self.labels = np.arange(len(self.paths), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)


_QUERY_NAMES = {"query", "anchor", "q", "a"}


def read_triplet_csv(path: str | Path) -> list[tuple[Path, Path, Path]]:
    """Triplets ``(query, positive, negative)`` from a CSV file.

    The first row is a header when its first field is ``query`` or ``anchor`` (any case) and its others
    ``positive``/``negative``; columns may then come in any order. Relative paths resolve against the
    CSV's folder. Blank lines are skipped; a row with other than three fields raises ``ValueError``
    naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"triplet CSV not found: {path}")
    base = path.parent
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [(i + 1, [c.strip() for c in row]) for i, row in enumerate(csv.reader(f)) if any(row)]
    if not rows:
        raise ValueError(f"{path} holds no triplets")
    order = (0, 1, 2)
    names = [c.lower() for c in rows[0][1]]
    if len(names) == 3 and set(names) & _QUERY_NAMES and {"positive", "negative"} <= set(names):
        query = next(i for i, n in enumerate(names) if n in _QUERY_NAMES)
        order = (query, names.index("positive"), names.index("negative"))
        rows = rows[1:]
    triplets: list[tuple[Path, Path, Path]] = []
    for line, row in rows:
        if len(row) != 3 or not all(row):
            raise ValueError(f"{path}:{line}: expected query,positive,negative, got {row}")
        q, p, n = ((base / row[i]) if not Path(row[i]).is_absolute() else Path(row[i]) for i in order)
        triplets.append((q, p, n))
    if not triplets:
        raise ValueError(f"{path} holds a header but no triplets")
    return triplets


class ImageStore:
    """Decode images on demand as ``uint8 [C, S, S]`` and keep up to ``max_bytes`` of them in memory.

    ``get(i)`` returns image ``i`` of ``paths``; ``batch(indices)`` stacks several. Unreadable files raise
    :class:`UnreadableImage`; the caller decides to skip (training counts and warns).
    """

    def __init__(
        self, paths: Sequence[str | Path], image_size: int, channels: int, max_bytes: int = 2 << 30
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.max_items = max(1, max_bytes // (self.channels * self.image_size**2))
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> torch.Tensor:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        try:
            image = pil_to_tensor(
                open_image(self.paths[index], self.channels), self.image_size, self.channels
            )
        except UnreadableImage:
            self.bad.add(index)
            raise
        self._cache[index] = image
        if len(self._cache) > self.max_items:
            self._cache.popitem(last=False)
        return image

    def pil(self, index: int):
        """The full-resolution PIL image (for augmented views); raises :class:`UnreadableImage`."""
        try:
            return open_image(self.paths[index], 3)
        except UnreadableImage:
            self.bad.add(index)
            raise
