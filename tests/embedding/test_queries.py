"""query_vectors: every query form a search accepts, turned into embeddings; the model only when needed."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from deeprank.data import export_image_folder, load_fashion_mnist
from deeprank.embedding import EmbeddingSet, embed_images, embed_tensor, image_sources, query_vectors
from deeprank.errors import DeeprankError, ModelMismatchError
from deeprank.models import MultiScaleNet


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultiScaleNet(in_channels=1, embedding_dim=16).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    images, labels = load_fashion_mnist("test")
    root = tmp_path_factory.mktemp("queries")
    export_image_folder(images[:6], labels[:6], root)
    return root


class Counting:
    """A model getter that counts how often the model was asked for."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self):
        self.calls += 1
        return self.model


def no_model():
    raise AssertionError("vectors must not need the model")


def test_vectors_pass_through_as_float32(rng):
    v = rng.normal(size=(3, 4))
    out = query_vectors(v, dim=4, model=no_model)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (3, 4)
    np.testing.assert_allclose(out, v, rtol=1e-6)
    assert query_vectors(v[1], dim=4, model=no_model).shape == (1, 4)  # one vector [d]
    t = torch.from_numpy(v.astype(np.float32)).requires_grad_()
    np.testing.assert_array_equal(query_vectors(t, dim=4, model=no_model), v.astype(np.float32))
    np.testing.assert_array_equal(query_vectors(v[::2], dim=4, model=no_model), v[::2].astype(np.float32))


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 5), np.float32), np.zeros(3), np.zeros((2, 4), np.int64), np.zeros((1, 1, 1, 1, 1))]
)
def test_other_arrays_are_refused(bad):
    with pytest.raises(ValueError, match=r"cannot search with an array .* expected vectors \[M, 4\]"):
        query_vectors(bad, dim=4, model=no_model)


def test_image_arrays_paths_folders_and_pil(model, folder):
    files = sorted(folder.rglob("*.png"))
    want = embed_images(model, files).embeddings
    getter = Counting(model)
    np.testing.assert_allclose(query_vectors(files, dim=16, model=getter), want, atol=1e-6)
    np.testing.assert_allclose(query_vectors(str(files[2]), dim=16, model=getter), want[2:3], atol=1e-6)
    np.testing.assert_allclose(query_vectors(folder, dim=16, model=getter), want, atol=1e-6)  # sorted files
    pil = [Image.open(f) for f in files[:2]]
    np.testing.assert_allclose(query_vectors(pil, dim=16, model=getter), want[:2], atol=1e-6)
    pixels = np.stack([np.asarray(Image.open(f)) for f in files])[:, None]  # uint8 [N, 1, H, W]
    np.testing.assert_allclose(query_vectors(pixels, dim=16, model=getter), want, atol=1e-5)
    floats = torch.from_numpy(pixels[0]).float() / 255  # one image [C, H, W] in [0, 1]
    direct = embed_tensor(model, floats[None])
    np.testing.assert_allclose(query_vectors(floats, dim=16, model=getter), direct, atol=1e-6)
    assert getter.calls == 6


def test_unreadable_images_fail_naming_the_file(model, tmp_path):
    bad = tmp_path / "fake.png"
    bad.write_text("hello")
    with pytest.raises(DeeprankError, match="fake.png"):
        query_vectors([bad], dim=16, model=lambda: model)


@dataclass
class Collection:
    embeddings: np.ndarray
    model_hash: str | None

    @property
    def dim(self):
        return self.embeddings.shape[1]


def test_another_collection_gives_its_vectors(rng):
    emb = rng.normal(size=(4, 3)).astype(np.float32)
    other = Collection(emb, "aaa")
    assert isinstance(other, EmbeddingSet) and not isinstance(emb, EmbeddingSet)
    np.testing.assert_array_equal(query_vectors(other, dim=3, model=no_model, model_hash="aaa"), emb)
    np.testing.assert_array_equal(
        query_vectors(Collection(emb, None), dim=3, model=no_model, model_hash="b"), emb
    )
    with pytest.raises(ModelMismatchError, match="dimension 3, this index 5"):
        query_vectors(other, dim=5, model=no_model)
    with pytest.raises(ModelMismatchError, match="different model"):
        query_vectors(other, dim=3, model=no_model, model_hash="bbb")


def test_image_sources(tmp_path):
    image = Image.new("L", (4, 4))
    assert image_sources("a.png") == ["a.png"]
    assert image_sources(tmp_path) == [tmp_path]
    assert image_sources(image) == [image]
    assert image_sources(("a.png", "b.png")) == ["a.png", "b.png"]
    assert image_sources([image, "b.png"]) == [image, "b.png"]
    for not_images in ([], [1.0, 2.0], np.zeros((2, 3)), torch.zeros(3)):
        assert image_sources(not_images) is None
