"""Image folders as users lay them out, and the one rule that labels them.

* :func:`list_images`: the image files under a folder (by extension, sorted, hidden files skipped).
* :class:`ImageFolder`: one sub-folder per category (``root/<category>/**/<image>``): an image's
  label is the first folder below ``root`` on its path; images directly in ``root`` have none and are
  left out. Training, evaluation, ``deeprank triplets`` and the demo all label folders this way.
* :class:`UnlabelledFolder`: every image is its own instance (the applied report's client data).

Nothing under a folder is dropped without a word: a sub-folder that cannot be read, a symbolic link
loop, a second link to a folder already listed, and an image name that is not a readable file (a
broken link, a FIFO) are each skipped with a ``RuntimeWarning`` and recorded as ``(path, reason)``
(``skipped`` of the listing), the pairs :attr:`deeprank.embedding.EmbedResult.skipped` holds for
unreadable images. Symbolic links to folders are followed (collections are often assembled from them).
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "UnlabelledFolder", "category_of", "list_images"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

Skipped = list[tuple[str, str]]


def _skip(skipped: Skipped, path: str | Path, reason: str) -> None:
    skipped.append((str(path), reason))
    warnings.warn(f"skipping {path}: {reason}", RuntimeWarning, stacklevel=4)


FolderId = tuple[int, int]  # (device, inode)
Chain = frozenset[FolderId]  # the folders above one being walked


def _folder_id(path: Path) -> FolderId:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name, reverse=True)


def _scan(root: Path, recursive: bool, skipped: Skipped) -> list[Path]:
    """Image files under ``root`` (sorted); problems below ``root`` go to ``skipped`` (module docstring).

    Real folders are walked first, depth first in name order and without recursion (a deep hostile
    tree cannot exhaust the Python stack); linked folders after them, so a folder reached both ways
    is listed at its real path. Each folder is entered once: again from inside itself is a loop,
    again from elsewhere a duplicate (which also bounds a tree of links to the folders it holds).
    """
    found: list[Path] = []
    real_root = os.path.realpath(root)
    seen = {_folder_id(root): root}
    folders: list[tuple[Path, Chain]] = [(root, frozenset(seen))]
    links: deque[tuple[Path, Chain]] = deque()
    while folders or links:
        if not folders:
            link, chain = links.popleft()
            _enter(link, chain, seen, folders, skipped, real_root)
            continue
        folder, chain = folders.pop()
        try:
            entries = _entries(folder)
        except OSError as exc:
            if folder == root:
                raise  # the folder asked for: an error of the caller's, not a skip
            _skip(skipped, folder, f"folder not readable ({exc.strerror or exc})")
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()  # both follow symbolic links
            except OSError:  # a link looping on itself
                is_dir = is_file = False
            if is_dir:
                if recursive and entry.is_symlink():
                    links.append((path, chain))
                elif recursive:
                    _enter(path, chain, seen, folders, skipped, real_root)
            elif is_file:
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(path)
            elif entry.is_symlink():
                _skip(skipped, path, "broken symbolic link")
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                _skip(skipped, path, "not a regular file")
    return sorted(found)


def _enter(
    path: Path,
    chain: Chain,
    seen: dict[FolderId, Path],
    folders: list[tuple[Path, Chain]],
    skipped: Skipped,
    real_root: str,
) -> None:
    """Queue the folder ``path`` for the walk unless it is a loop or was listed already."""
    try:
        ident = _folder_id(path)
        real = os.path.realpath(path)
    except OSError as exc:
        _skip(skipped, path, f"folder not readable ({exc.strerror or exc})")
        return
    # A link to a folder holding the root would list the root again, and everything beside it.
    if ident in chain or real_root == real or real_root.startswith(real.rstrip(os.sep) + os.sep):
        _skip(skipped, path, "symbolic link loop (a folder inside itself)")
    elif ident in seen:  # a real folder met again inside a linked one, or a second link
        _skip(skipped, path, f"the same folder as {seen[ident]}, listed there")
    else:
        seen[ident] = path
        folders.append((path, chain | {ident}))


def _check_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"image folder not found: {folder}")
    return folder


def list_images(folder: str | Path, recursive: bool = True, *, skipped: Skipped | None = None) -> list[Path]:
    """Image files (by extension, case-insensitive) under ``folder``, sorted; hidden files skipped.

    Entries that cannot be listed or read (module docstring) are warned about and appended to
    ``skipped`` when given. ``folder`` itself unreadable raises ``PermissionError``.
    """
    return _scan(_check_folder(folder), recursive, [] if skipped is None else skipped)


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
    ``labels`` (``int64 [N]``, index into ``classes``), ``skipped`` (``(path, reason)`` of what could
    not be listed, module docstring). Images directly in ``root`` are ignored (:func:`category_of` is
    the same rule for one path).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = _check_folder(root)
        self.skipped: Skipped = []
        categories: dict[str, int] = {}
        paths: list[Path] = []
        labels: list[int] = []
        for path in _scan(self.root, True, self.skipped):
            category = category_of(path.relative_to(self.root))
            if category is None:
                continue
            paths.append(path)
            labels.append(categories.setdefault(category, len(categories)))
        if not paths:
            raise ValueError(
                f"{self.root} holds no images in sub-folders; expected one sub-folder per category "
                "(use an unlabelled folder for flat collections)"
            )
        self.classes = list(categories)  # sorted: the paths come sorted, categories first
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)


class UnlabelledFolder:
    """Every image under ``root`` is its own instance (``labels`` = ``0..N-1``); ``skipped`` as in
    :class:`ImageFolder`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.skipped: Skipped = []
        self.paths = list_images(self.root, skipped=self.skipped)
        if len(self.paths) < 2:
            raise ValueError(f"{self.root} must hold at least 2 images for instance training")
        self.labels = np.arange(len(self.paths), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)
