"""Fashion-MNIST (Zalando, MIT licence): the bundled test split and the Debian package's train split.

The 10,000-image test split ships inside the package (``deeprank/data/fashion_mnist/``), so training
and the demo run with no download. The 60,000-image train split comes from the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``) or any folder holding the original
``*-idx?-ubyte.gz`` files.
"""

from __future__ import annotations

import gzip
import os
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["CLASS_NAMES", "DEBIAN_DIR", "export_image_folder", "load_fashion_mnist", "read_idx"]

CLASS_NAMES = (
    "T-shirt-top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle-boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_PREFIX = {"test": "t10k", "train": "train"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) of unsigned bytes into an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=header)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} values")
    return array.reshape(shape).copy()  # writable, detached from the file buffer


def _bundled_dir() -> Path:
    return Path(str(resources.files("deeprank.data") / "fashion_mnist"))


def load_fashion_mnist(split: str = "test", path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images ``uint8 [N, 28, 28]`` and labels ``int64 [N]``.

    ``split="test"`` reads the bundled copy unless ``path`` is given. ``split="train"`` reads from
    ``path``, else ``$DEEPRANK_FASHION_MNIST``, else the Debian package's folder; it raises
    ``FileNotFoundError`` with the install hint when none holds the files.
    """
    if split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    candidates: list[Path] = []
    if path is not None:
        candidates.append(Path(path))
    else:
        if split == "test":
            candidates.append(_bundled_dir())
        if os.environ.get("DEEPRANK_FASHION_MNIST"):
            candidates.append(Path(os.environ["DEEPRANK_FASHION_MNIST"]))
        candidates.append(DEBIAN_DIR)
    prefix = _PREFIX[split]
    for folder in candidates:
        images = folder / f"{prefix}-images-idx3-ubyte.gz"
        labels = folder / f"{prefix}-labels-idx1-ubyte.gz"
        if images.is_file() and labels.is_file():
            x, y = read_idx(images), read_idx(labels).astype(np.int64)
            if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(f"{folder}: images {x.shape} and labels {y.shape} do not match")
            return x, y
    where = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"Fashion-MNIST {split} split not found in {where}; install it with "
        "`apt-get install dataset-fashion-mnist` or pass the folder holding "
        f"{prefix}-images-idx3-ubyte.gz"
    )


def export_image_folder(
    images: np.ndarray,
    labels: np.ndarray,
    folder: str | Path,
    class_names: tuple[str, ...] | list[str] = CLASS_NAMES,
    prefix: str = "",
) -> list[Path]:
    """Write images as PNG files in one sub-folder per class (``folder/<class>/<prefix><index>.png``).

    This is the image-folder layout :class:`deeprank.data.ImageFolder` and ``deeprank train`` read.
    Existing files are overwritten. Returns the written paths in input order.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W] or [N, H, W, 3], got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be [N] = [{images.shape[0]}], got {labels.shape}")
    folder = Path(folder)
    width = len(str(max(images.shape[0] - 1, 0)))
    paths: list[Path] = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = class_names[int(label)] if int(label) < len(class_names) else f"class_{int(label)}"
        target = folder / name / f"{prefix}{index:0{width}d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target)
        paths.append(target)
    return paths
