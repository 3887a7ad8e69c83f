"""WebDataset shards: ``.tar`` files of samples ``KEY.jpg`` (or ``.png``, ...) + ``KEY.cls`` (the label).

Members sharing a key (the name up to its first dot, WebDataset's rule) form one sample. A shard is
listed once, member headers only (the stdlib :mod:`tarfile`, reading sequentially); an image's bytes
are read later straight from its offset in the shard, so nothing is unpacked to disk and a shard is
never held in memory. Only uncompressed tar (what WebDataset writes) can be read at an offset.

Hostile or broken shards: a sample with no image, no ``.cls`` or an unreadable label, a member that
is not a regular file, or an image member larger than :data:`~deeprank.data.records.MAX_MEMBER_BYTES`
is skipped with a warning and listed in ``Records.skipped``; a shard truncated mid-way keeps the
samples listed before the cut (the sample cut is one more skip); image bytes not an image fail
in the one decode path when read (:class:`~deeprank.data.images.UnreadableImage`, counted by training).
"""

from __future__ import annotations

import glob
import tarfile
import warnings
from pathlib import Path

from .folders import IMAGE_EXTENSIONS
from .images import UnreadableImage
from .records import MAX_MEMBER_BYTES, Records, class_codes

__all__ = ["open_shards", "shard_paths"]

MAX_LABEL_BYTES = 1024


def shard_paths(spec: str) -> list[Path]:
    """The shard files of ``spec``: one ``.tar`` file, or a glob pattern of them (sorted)."""
    if any(c in spec for c in "*?["):
        found = sorted(Path(p) for p in glob.glob(spec))
        if not found:
            raise FileNotFoundError(f"no WebDataset shards match {spec}")
        return found
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"WebDataset shard not found: {path}")
    return [path]


def _skip(skipped: list[tuple[str, str]], name: str, reason: str) -> None:
    skipped.append((name, reason))
    warnings.warn(f"skipping {name}: {reason}", RuntimeWarning, stacklevel=4)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's key and extension: ``a/b/000.seg.jpg`` -> (``a/b/000``, ``seg.jpg``)."""
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext.lower()


def _read_member(path: Path, offset: int, size: int, name: str) -> bytes:
    if size > MAX_MEMBER_BYTES:
        raise UnreadableImage(name, f"member of {size} bytes, over the {MAX_MEMBER_BYTES} byte limit")
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError as exc:
        raise UnreadableImage(name, f"cannot read the shard ({exc.strerror or exc})") from None
    if len(data) != size:
        raise UnreadableImage(name, f"truncated: {len(data)} of {size} bytes in the shard")
    return data


def _has_data_after(path: Path, offset: int) -> bool:
    """Whether anything but the zero blocks of a tar's end follows ``offset`` (a cut header does)."""
    with open(path, "rb") as f:
        f.seek(offset)
        while block := f.read(1 << 16):
            if block.strip(b"\0"):
                return True
    return False


def _list_shard(path: Path, samples: dict, skipped: list[tuple[str, str]]) -> None:
    """Add the members of one shard to ``samples``: key -> {"image": (offset, size, name), "cls": text}."""
    try:  # uncompressed only: members are read at their offsets
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise ValueError(f"{path} is not an uncompressed tar file (a WebDataset shard): {exc}") from None
    length = path.stat().st_size
    with tar:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, OSError, EOFError) as exc:
                _skip(skipped, str(path), f"shard cut short or corrupt after {len(samples)} samples ({exc})")
                return
            if member is None:  # the end, or a header cut short (tarfile stops quietly at either)
                if tar.offset >= length or _has_data_after(path, tar.offset):  # no end blocks: cut
                    _skip(skipped, str(path), f"shard cut short or corrupt after {len(samples)} samples")
                return
            name = f"{path.name}/{member.name}"
            key, ext = _split_key(member.name)
            if not member.isfile():
                if not member.isdir():
                    _skip(skipped, name, "not a regular file member")
                continue
            sample = samples.setdefault((str(path), key), {})
            if member.offset_data + member.size > length:  # tarfile ends quietly at a cut header
                sample["bad"] = f"shard cut short inside {member.name}"
                continue
            if ext == "cls":
                try:
                    if member.size > MAX_LABEL_BYTES:
                        raise ValueError(f"{member.size} bytes")
                    raw = tar.extractfile(member).read()  # type: ignore[union-attr]
                    sample["cls"] = raw.decode("utf-8").strip()
                except (ValueError, UnicodeDecodeError, tarfile.TarError, OSError) as exc:
                    sample["bad"] = f"unreadable label ({exc})"
            elif f".{ext.rpartition('.')[2]}" in IMAGE_EXTENSIONS and "image" not in sample:
                sample["image"] = (member.offset_data, member.size, name)


def open_shards(spec: str, *, labelled: bool = True) -> Records:
    """The labelled samples of the WebDataset shard(s) ``spec`` (module docstring); with
    ``labelled=False`` (embedding) samples need no ``.cls`` (their label is then their key)."""
    paths = shard_paths(spec)
    samples: dict[tuple[str, str], dict] = {}
    skipped: list[tuple[str, str]] = []
    for path in paths:
        _list_shard(path, samples, skipped)
    entries, values = [], []
    for (shard, key), sample in samples.items():
        label = f"{Path(shard).name}/{key}"
        if "bad" in sample:
            _skip(skipped, label, sample["bad"])
        elif "image" not in sample:
            _skip(skipped, label, "no image member")
        elif labelled and not sample.get("cls"):
            _skip(skipped, label, "no .cls label")
        else:
            entries.append((Path(shard), *sample["image"]))
            values.append(sample.get("cls") or label)
    if not entries:
        raise ValueError(
            f"{spec} holds no {'labelled ' if labelled else ''}samples (KEY.jpg + KEY.cls members)"
        )
    labels, classes = class_codes(values)

    def read(i: int) -> bytes:
        shard, offset, size, name = entries[i]
        return _read_member(shard, offset, size, name)

    description = {"kind": "webdataset", "path": spec, "shards": len(paths), "images": len(entries)}
    return Records([e[3] for e in entries], labels, classes, read, description, skipped)
