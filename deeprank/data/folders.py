"""Image folders as users lay them out, and the one rule that labels them.

* :func:`list_images`: the image files under a folder (by extension, sorted, hidden files skipped).
* :class:`ImageFolder`: one sub-folder per category (``root/<category>/**/<image>``): an image's
  label is the first folder below ``root`` on its path; images directly in ``root`` have none and are
  left out. Training, evaluation, ``deeprank triplets`` and the demo all label folders this way.
* :class:`UnlabelledFolder`: every image is its own instance (the applied report's client data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "UnlabelledFolder", "category_of", "list_images"]

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


def category_of(relative_path: str | Path) -> str | None:
    """The category of an image by its path relative to the collection root: its first folder.

    ``"shoes/boots/0042.jpg"`` is in ``"shoes"``; an image directly in the root has no category
    (``None``). The rule :class:`ImageFolder` applies to whole folders, for ids of an index.
    """
    parts = Path(relative_path).parts
    return parts[0] if len(parts) > 1 else None


class ImageFolder:
    """Images in one sub-folder per category.

    Attributes: ``root``, ``classes`` (sorted sub-folder names), ``paths`` (list of ``Path``),
    ``labels`` (``int64 [N]``, index into ``classes``). Images directly in ``root`` are ignored
    (:func:`category_of` is the same rule for one path).
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
