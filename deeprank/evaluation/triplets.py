"""Labelled triplets for evaluation: sampled from class labels, and written as a CSV for a folder."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.folders import ImageFolder
from ..errors import DeeprankError
from ..io import write_text_atomic

__all__ = [
    "labelled_collection",
    "sample_labelled_triplets",
    "triplets_for_each_query",
    "write_folder_triplets",
]


def labelled_collection(folder: str | os.PathLike) -> ImageFolder:
    """The labelled images of ``folder`` (the :class:`~deeprank.data.ImageFolder` rule), 2+ categories."""
    collection = ImageFolder(folder)
    if len(collection.classes) < 2:
        raise DeeprankError(f"{folder} needs at least two category sub-folders of images")
    return collection


def _draw_partners(codes: np.ndarray, queries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each query a uniform positive of its class (not itself) and a uniform negative of another class."""
    sizes = np.bincount(codes)
    order = np.argsort(codes, kind="stable")  # items grouped by class
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.empty(codes.size, dtype=np.int64)
    position[order] = np.arange(codes.size)
    c = codes[queries]
    size, start = sizes[c], starts[c]
    own = position[queries] - start
    r = (rng.random(queries.size) * (size - 1)).astype(np.int64)
    pos = order[start + r + (r >= own)]  # skip the query's own slot in its class block
    r = (rng.random(queries.size) * (codes.size - size)).astype(np.int64)
    neg = order[np.where(r < start, r, r + size)]  # skip the query's class block
    return np.stack([queries, pos, neg], axis=1)


def _class_codes(labels: Any) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.size < 3:
        raise ValueError(f"labels must be 1-D with at least 3 items, got shape {lab.shape}")
    classes, codes = np.unique(lab, return_inverse=True)
    if classes.size < 2:
        raise ValueError("sampling triplets needs at least two classes")
    codes = codes.reshape(-1)
    if not (np.bincount(codes) >= 2).any():
        raise ValueError("no class has two images: cannot draw a positive")
    return codes


def sample_labelled_triplets(labels: Any, count: int, seed: int = 0) -> np.ndarray:
    """Random triplets from class labels: positive of the query's class, negative of another class.

    Queries are uniform over the items whose class has a second item. Returns int64 ``[count, 3]`` of
    indices ``(query, positive, negative)`` with positive != query.
    """
    codes = _class_codes(labels)
    eligible = np.flatnonzero(np.bincount(codes)[codes] >= 2)
    rng = np.random.default_rng(seed)
    return _draw_partners(codes, rng.choice(eligible, size=count), rng)


def triplets_for_each_query(labels: Any, per_image: int = 1, seed: int = 0) -> np.ndarray:
    """Like :func:`sample_labelled_triplets`, but every item (whose class has a second item) is the query
    of exactly ``per_image`` triplets, in item order."""
    codes = _class_codes(labels)
    queries = np.repeat(np.flatnonzero(np.bincount(codes)[codes] >= 2), per_image)
    return _draw_partners(codes, queries, np.random.default_rng(seed))


def write_folder_triplets(
    folder: str | os.PathLike, output: str | os.PathLike, *, per_image: int = 1, seed: int = 0
) -> int:
    """Write a ``query,positive,negative`` CSV sampled from a labelled folder.

    Paths are relative to the CSV's own folder (as :func:`deeprank.data.read_triplet_csv` resolves them).

    Each image is the query of ``per_image`` triplets; the positive comes from its category folder
    (not itself), the negative from another. Returns the number of triplets written.
    """
    collection = labelled_collection(folder)
    files = collection.paths
    t = triplets_for_each_query(collection.labels, per_image, seed)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["query", "positive", "negative"])
    base = Path(output).resolve().parent
    rel = [Path(os.path.relpath(f.resolve(), base)).as_posix() for f in files]
    for q, p, n in t.tolist():
        writer.writerow([rel[q], rel[p], rel[n]])
    write_text_atomic(output, buf.getvalue())
    return int(t.shape[0])
