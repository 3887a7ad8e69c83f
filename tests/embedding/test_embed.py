"""Embedding image folders with a model; Index built from a folder and searched by image."""

import numpy as np
import pytest
import torch
from PIL import Image

from deeprank import Index
from deeprank.data import export_image_folder, load_fashion_mnist
from deeprank.embedding import embed_folder, embed_images, embed_tensor
from deeprank.errors import DeeprankError, EmptyCollectionError, ModelMismatchError
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultiScaleNet(in_channels=1, embedding_dim=16).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), model)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    images, labels = load_fashion_mnist("test")
    root = tmp_path_factory.mktemp("imgs")
    export_image_folder(images[:30], labels[:30], root)
    (root / "Bag" / "broken.png").write_bytes(b"not a png at all")
    return root


def test_embed_folder_skips_unreadable_and_matches_direct_embedding(model, folder):
    emb, files, skipped = embed_folder(model, folder, batch_size=7)
    assert emb.shape == (30, 16) and len(files) == 30
    assert [s[0] for s in skipped] == [str(folder / "Bag" / "broken.png")]
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    images, _ = load_fashion_mnist("test")
    row = int(files[3].stem)  # export names files by their index in the split
    direct = embed_tensor(model, torch.from_numpy(images[row : row + 1]))
    np.testing.assert_allclose(emb[3], direct[0], atol=1e-5)


def test_embed_images_accepts_pil_and_reports_failures(model, folder):
    files = sorted(folder.rglob("*.png"))
    pil = Image.open(files[0])
    res = embed_images(model, [pil, files[0], folder / "missing.png"])
    assert res.kept.tolist() == [0, 1] and len(res.skipped) == 1
    np.testing.assert_allclose(res.embeddings[0], res.embeddings[1], atol=1e-6)


def test_empty_and_missing_folders(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        embed_folder(model, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyCollectionError, match="no images"):
        embed_folder(model, tmp_path / "empty")


def test_index_from_folder_search_by_path_pil_and_array(checkpoint, folder, tmp_path):
    index = Index.build(checkpoint, folder, progress=False)
    assert len(index) == 30 and len(index.skipped) == 1
    some = index.ids[5]
    path = index.path_of(some)
    assert path.endswith(some) and some.split("/")[0] in {p.name for p in folder.iterdir()}
    by_path = index.search(path, k=3)
    assert by_path.ids[0][0] == some and by_path.distances[0, 0] == pytest.approx(0, abs=1e-5)
    by_pil = index.search(Image.open(path), k=3)
    np.testing.assert_array_equal(by_pil.indices, by_path.indices)
    arr = np.asarray(Image.open(path))[None]  # uint8 [1, H, W]
    np.testing.assert_array_equal(index.search(arr, k=3).indices, by_path.indices)
    both = index.search([path, Image.open(path)], k=2)
    assert len(both) == 2
    good = next(p for p in sorted(folder.iterdir()) if p.name != "Bag")
    assert index.search(good, k=1).indices.shape[0] == len(list(good.glob("*.png")))
    with pytest.raises(DeeprankError, match="broken.png"):  # explicit queries must all be readable
        index.search(folder / "Bag", k=1)

    # Round trip: the loaded index finds the checkpoint it was built with and searches by image.
    index.save(tmp_path / "idx", include_model=True)
    loaded = Index.load(tmp_path / "idx")
    assert (loaded.checkpoint / "config.json").exists() and loaded.checkpoint.is_relative_to(tmp_path / "idx")
    np.testing.assert_array_equal(loaded.search(path, k=3).indices, by_path.indices)
    added = loaded.add([path], ids=["again"])
    assert added == [] and loaded.search(path, k=2).ids[0][:2] in ([some, "again"], ["again", some])


def test_model_mismatch_is_detected(checkpoint, folder, tmp_path):
    index = Index.build(checkpoint, folder, progress=False)
    index.save(tmp_path / "idx")
    other = MultiScaleNet(in_channels=1, embedding_dim=16, single_scale=True)
    with pytest.raises(ModelMismatchError, match="not the one this index was built with"):
        Index.load(tmp_path / "idx", model=other)
    wrong_dim = MultiScaleNet(in_channels=1, embedding_dim=8)
    with pytest.raises(ModelMismatchError, match="8 dimensions"):
        Index.load(tmp_path / "idx", model=wrong_dim)
    same = Index.load(tmp_path / "idx", model=checkpoint)
    assert len(same) == 30
