"""Triplet CSV files: ``query,positive,negative`` rows of image paths (read for training and evaluation)."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["read_triplet_csv"]

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
