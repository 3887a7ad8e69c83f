"""Writing small WebDataset shards and Hugging Face datasets for tests (no downloads)."""

import io
import tarfile
from pathlib import Path

from PIL import Image

COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]


def png_bytes(color, size=(20, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(path: Path, members) -> Path:
    """A plain tar of ``(name, bytes)`` members, as WebDataset writes them."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def samples(count=12, start=0):
    """``count`` samples ``NNNNNN.png`` + ``NNNNNN.cls``, three tinted classes in turn."""
    out = []
    for i in range(start, start + count):
        out += [(f"{i:06d}.png", png_bytes(COLORS[i % 3])), (f"{i:06d}.cls", str(i % 3).encode())]
    return out
