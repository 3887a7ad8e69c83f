"""Data specs that name a container of records: ``hf:PATH`` or WebDataset ``.tar`` shards (or a glob).

Its own module because it picks between the readers (:mod:`deeprank.data.hf`,
:mod:`deeprank.data.webdataset`), which themselves build on :mod:`deeprank.data.records`.
"""

from __future__ import annotations

from .hf import open_hf
from .records import Records
from .webdataset import open_shards

__all__ = ["is_records_spec", "open_records"]


def is_records_spec(data: str) -> bool:
    """Whether a data spec names a container of records (``hf:...``, ``*.tar``) rather than a folder."""
    return data.startswith("hf:") or data.lower().endswith(".tar")


def open_records(data: str, *, image_column: str = "image", label_column: str | None = "label") -> Records:
    """The records of ``hf:PATH`` (:func:`deeprank.data.hf.open_hf`) or WebDataset ``.tar`` shards
    (:func:`deeprank.data.webdataset.open_shards`; a glob such as ``shards/train-*.tar`` for several).

    ``label_column=None``: labels are not needed (embedding); each record is then its own class."""
    if data.startswith("hf:"):
        return open_hf(data[3:], image_column=image_column, label_column=label_column)
    return open_shards(data, labelled=label_column is not None)
