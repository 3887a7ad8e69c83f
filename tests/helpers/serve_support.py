"""Shared pieces of the serve tests: a small real collection, upload helpers, limits."""

import io
from pathlib import Path

import torch
from PIL import Image

from deeprank.data import export_image_folder, load_fashion_mnist
from deeprank.index import Index
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import save_checkpoint

MAX_UPLOAD = 256 * 1024
MAX_PIXELS = 1_000_000


def build_collection(root: Path, count: int = 40) -> Path:
    """Fashion-MNIST test images as PNG files, an untrained ``small`` model, and a saved index over them."""
    images, labels = load_fashion_mnist("test")
    export_image_folder(images[:count], labels[:count], root / "images")
    torch.manual_seed(0)
    save_checkpoint(root / "model", MultiScaleNet("small", in_channels=1))
    index = Index.build(root / "model", root / "images", progress=False)
    return index.save(root / "index")


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def upload(client, data: bytes, k: int = 5, name: str = "query.png"):
    return client.post("/search", files={"image": (name, data, "application/octet-stream")}, data={"k": k})


def assert_still_serving(client, index):
    item = index.ids[3]
    r = client.post("/search", data={"id": item, "k": 2})
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0]["id"] == item
