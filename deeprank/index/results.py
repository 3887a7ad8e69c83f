"""``SearchResult``: the ranked neighbours of a batch of queries, with their ids and paths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SearchResult"]


@dataclass
class SearchResult:
    """Ranked neighbours of ``M`` queries: ``distances`` float32 ``[M, k]`` ascending, ``indices`` int64
    rows of the index, ``ids`` and ``paths`` (``[M][k]`` lists; a path is None for vector-only items)."""

    distances: np.ndarray
    indices: np.ndarray
    ids: list[list[Any]]
    paths: list[list[str | None]]

    def __len__(self) -> int:
        return self.distances.shape[0]

    def hits(self, query: int = 0) -> list[dict[str, Any]]:
        """The ranked hits of one query as ``[{"rank", "id", "path", "distance"}, ...]`` (rank 1 first)."""
        return [
            {"rank": r + 1, "id": i, "path": p, "distance": float(d)}
            for r, (i, p, d) in enumerate(
                zip(self.ids[query], self.paths[query], self.distances[query], strict=True)
            )
        ]
