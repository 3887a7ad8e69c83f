"""Search over an image collection: :class:`Index` (ids and paths over vectors) and its search backends.

- :mod:`.index`: :class:`Index`: build from a model and a folder, search by image or vector, save/load.
- :mod:`.flat`: :class:`FlatIndex`, exact search with deeprank's top-K kernel.
- :mod:`.faiss_index`: approximate search through FAISS (optional extra).
- :mod:`.results`: :class:`SearchResult`.
"""

from __future__ import annotations

from .flat import FlatIndex
from .index import Index
from .results import SearchResult

__all__ = ["FlatIndex", "Index", "SearchResult"]
