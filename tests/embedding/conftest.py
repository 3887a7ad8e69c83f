"""A small image collection with unreadable files among readable ones, and a model to embed it."""

import pytest
import torch
from PIL import Image

from deeprank.data import export_image_folder, load_fashion_mnist
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import save_checkpoint


@pytest.fixture(scope="session")
def grey_model():
    torch.manual_seed(0)
    return MultiScaleNet(in_channels=1, embedding_dim=16).eval()


@pytest.fixture(scope="session")
def grey_checkpoint(tmp_path_factory, grey_model):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), grey_model)


@pytest.fixture(scope="session")
def mixed_folder(tmp_path_factory):
    """41 Fashion-MNIST PNGs, 2 RGB JPEGs of other sizes, and 3 unreadable files spread over the
    sorted order (so they land in different batches): 46 files, 43 readable."""
    images, labels = load_fashion_mnist("test")
    root = tmp_path_factory.mktemp("mixed")
    written = export_image_folder(images[:41], labels[:41], root)
    (root / "Bag" / "0000_broken.png").write_bytes(b"not a png at all")
    (root / "Sneaker" / "zz_empty.jpg").write_bytes(b"")
    truncated = written[5].read_bytes()
    (root / "Trouser" / "5_truncated.png").write_bytes(truncated[: len(truncated) // 2])
    Image.new("RGB", (40, 31), (200, 30, 90)).save(root / "Coat" / "rgb_a.jpg")
    Image.effect_noise((50, 50), 40).convert("RGB").save(root / "Shirt" / "rgb_b.jpg")
    return root
