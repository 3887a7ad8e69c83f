"""Hugging Face ``datasets`` data on disk: ``hf:PATH`` with an image column and a label column.

``PATH`` is a folder written by ``Dataset.save_to_disk`` (its ``state.json`` lists the Arrow files), or
one ``.arrow`` / ``.parquet`` file (what the Hub stores). Nothing is downloaded: a hub name is not
looked up. The files are read with ``pyarrow`` (Arrow files memory-mapped), so the ``datasets``
package itself is not needed to read them (extra ``deeprank[hf]``).

The image column holds what ``datasets.Image`` stores, ``{"bytes": ..., "path": ...}`` structs (the
bytes, or else the file at ``path``), or raw encoded bytes; the label column integers (``ClassLabel``)
or strings. Rows without an image or a label are skipped with a warning and listed in
``Records.skipped``; bytes that do not decode are skipped when read, like unreadable files.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ..errors import DeeprankError
from .images import UnreadableImage
from .records import MAX_MEMBER_BYTES, Records, class_codes

__all__ = ["open_hf"]


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
    except ImportError as exc:
        raise DeeprankError(f"hf: data needs pyarrow: pip install 'deeprank[hf]' ({exc})") from None
    return pa


def _read_arrow(path: Path) -> Any:
    pa = _pyarrow()
    source = pa.memory_map(str(path), "r")
    try:  # datasets writes the IPC stream format; other tools the file format
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source).read_all()


def _arrow_files(folder: Path) -> list[Path]:
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        raise ValueError(f"{folder} holds several splits {splits}; give one: hf:{folder}/{splits[0]}")
    state = folder / "state.json"
    if state.is_file():
        files = [folder / f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
    else:
        files = sorted(folder.glob("*.arrow"))
    if not files:
        raise FileNotFoundError(f"{folder} is not a saved Hugging Face dataset (no state.json, no .arrow)")
    return files


def _table(path: Path) -> Any:
    pa = _pyarrow()
    if path.is_dir():
        return pa.concat_tables([_read_arrow(f) for f in _arrow_files(path)])
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path, memory_map=True)
    if path.suffix.lower() == ".arrow":
        return _read_arrow(path)
    if not path.exists():
        raise FileNotFoundError(
            f"hf: dataset not found: {path} (a save_to_disk folder, .arrow or .parquet file; "
            "nothing is downloaded)"
        )
    raise ValueError(f"hf:{path}: expected a save_to_disk folder, an .arrow or a .parquet file")


def _column(table: Any, name: str, what: str, flag: str) -> Any:
    if name not in table.column_names:
        raise ValueError(f"{flag} {name!r}: no such {what} column; the columns are {table.column_names}")
    return table.column(name)


def _image_bytes(value: Any, base: Path, name: str) -> bytes:
    """The encoded bytes of one image cell: raw bytes, or a ``{"bytes", "path"}`` struct."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path:
            file = Path(path) if Path(path).is_absolute() else base / path
            try:
                if file.stat().st_size > MAX_MEMBER_BYTES:
                    raise UnreadableImage(name, f"{file} is over the {MAX_MEMBER_BYTES} byte limit")
                return file.read_bytes()
            except OSError as exc:
                raise UnreadableImage(name, f"cannot read {file} ({exc.strerror or exc})") from None
        value = data
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise UnreadableImage(name, f"no image bytes in the row ({type(value).__name__})")


def open_hf(path: str, *, image_column: str = "image", label_column: str | None = "label") -> Records:
    """The rows of the Hugging Face dataset at ``path`` (module docstring) as :class:`Records`."""
    root = Path(path)
    table = _table(root)
    images = _column(table, image_column, "image", "--image-column")
    base = root if root.is_dir() else root.parent
    skipped: list[tuple[str, str]] = []
    rows = list(range(table.num_rows))
    if label_column is not None:
        raw = _column(table, label_column, "label", "--label-column").to_pylist()
        for i in [r for r in rows if raw[r] is None]:
            skipped.append((f"{root.name}[{i}]", "no label"))
            warnings.warn(f"skipping {root.name}[{i}]: no label", RuntimeWarning, stacklevel=2)
        rows = [r for r in rows if raw[r] is not None]
        labels, classes = class_codes([raw[r] for r in rows])
    else:  # unlabelled: each row its own instance
        labels, classes = class_codes(rows)
    if not rows:
        raise ValueError(f"hf:{path} has no labelled rows")
    names = [f"{root.name}[{r}]" for r in rows]

    def read(i: int) -> bytes:
        return _image_bytes(images[rows[i]].as_py(), base, names[i])

    description = {"kind": "hf", "path": str(root), "images": len(rows), "image_column": image_column}
    if label_column is not None:
        description["label_column"] = label_column
    return Records(names, labels, classes, read, description, skipped)
