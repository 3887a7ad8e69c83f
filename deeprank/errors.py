"""Exceptions a user can cause and should see as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class DeeprankError(Exception):
    """Base class of deeprank's user-facing errors (bad input, missing or corrupt files)."""


class IndexFormatError(DeeprankError, ValueError):
    """An index directory is missing files, truncated, corrupt or of an unknown format version."""


class ModelMismatchError(DeeprankError, ValueError):
    """A model and an index (or two indexes) disagree on the embedding they use."""


class EmptyCollectionError(DeeprankError, ValueError):
    """A folder or collection holds no usable images."""


class MissingExtraError(DeeprankError, ImportError):
    """An optional part of deeprank is not installed; the message names the ``pip install`` extra."""
