"""Which backend classes an index directory can store, by the name its manifest records.

Each storable backend class has a ``backend_name``. The exact backend is always a
:class:`~deeprank.index.flat.FlatIndex` (``"flat"``); the approximate one is a backend whose files do
not clash with it (``"faiss"``, ``"milvus"``). The manifest's ``backends.approximate`` entry is
``{"backend": NAME, **backend.describe()}`` and :meth:`deeprank.Index.load` reopens it with
``backend_class(NAME).load(folder)``.
"""

from __future__ import annotations

from typing import Any

from ..errors import DeeprankError, IndexFormatError
from .backend import Backend

__all__ = ["backend_class", "manifest_entry"]


def _classes() -> dict[str, type]:
    """The approximate backends an index directory can store, by name."""
    from .faiss_index import FaissIndex
    from .milvus_index import MilvusIndex  # imports pymilvus only when one is opened

    return {c.backend_name: c for c in (FaissIndex, MilvusIndex)}


def backend_class(name: Any) -> type:
    """The backend class stored under ``name`` in a manifest (``IndexFormatError`` if unknown)."""
    classes = _classes()
    if not isinstance(name, str) or name not in classes:
        raise IndexFormatError(f"the manifest names an unknown backend {name!r}; known: {', '.join(classes)}")
    return classes[name]


def manifest_entry(backend: Backend) -> dict[str, Any]:
    """``{"backend": NAME, ...facts}`` for the manifest; ``DeeprankError`` for a backend that cannot be
    stored (one that is not a registered class)."""
    name = getattr(type(backend), "backend_name", None)
    if name not in _classes() or type(backend) is not _classes()[name]:
        raise DeeprankError(
            f"an index directory cannot store a {type(backend).__name__} as its approximate backend "
            f"(storable: {', '.join(_classes())})"
        )
    describe = getattr(backend, "describe", None)
    return {"backend": name, **(describe() if describe else {})}
