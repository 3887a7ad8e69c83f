"""Search over an image collection: :class:`Index` (ids and paths over keyed vectors) and its backends.

- :mod:`.index`: :class:`Index`: build from a model and a folder, search by image or vector, save/load.
- :mod:`.backend`: :class:`Backend`, the interface every search backend implements (int64 keys).
- :mod:`.flat`: :class:`FlatIndex`, exact search with deeprank's top-K kernel.
- :mod:`.faiss_index`: :class:`FaissIndex`, approximate search through FAISS (optional extra).
- :mod:`.keys`: the key <-> row bookkeeping the local backends share.
- :mod:`.registry`: which approximate backends an index directory stores, by name.
- :mod:`.format`: the on-disk index directory (format version 2: versions behind a pointer).
- :mod:`.export`: exports for other engines, replaced as a whole.
- :mod:`.results`: :class:`SearchResult`.
"""

from __future__ import annotations

from .backend import Backend
from .faiss_index import FaissIndex
from .flat import FlatIndex
from .index import Index
from .results import SearchResult

__all__ = ["Backend", "FaissIndex", "FlatIndex", "Index", "SearchResult"]
