"""The index records its model's weights hash: a retrained checkpoint is refused everywhere (load with a
model, the lazily loaded model, ``deeprank query``); ``include_model`` never carries training state."""

from __future__ import annotations

import hashlib

import pytest
import torch

from deeprank import Index
from deeprank.cli import main
from deeprank.data import export_image_folder, load_fashion_mnist
from deeprank.errors import ModelMismatchError
from deeprank.index import format as fmt
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import save_checkpoint, weights_hash


def net(seed):
    torch.manual_seed(seed)
    return MultiScaleNet(in_channels=1, embedding_dim=16).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    images, labels = load_fashion_mnist("test")
    root = tmp_path_factory.mktemp("imgs")
    export_image_folder(images[:12], labels[:12], root)
    return root


@pytest.fixture
def built(tmp_path, folder):
    """An index saved from a checkpoint that is then retrained in place (same architecture)."""
    ckpt = save_checkpoint(tmp_path / "ckpt", net(0), state={"step": 3})
    before = weights_hash(ckpt)
    path = Index.build(ckpt, folder, progress=False).save(tmp_path / "idx")
    save_checkpoint(tmp_path / "ckpt", net(1))  # `train -o ckpt` again: new weights, same config
    return path, ckpt, before, weights_hash(ckpt)


def test_weights_hash_is_the_sha256_of_the_weights_file(tmp_path):
    ckpt = save_checkpoint(tmp_path / "c", net(0))
    assert weights_hash(ckpt) == hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    assert weights_hash(save_checkpoint(tmp_path / "d", net(0))) == weights_hash(ckpt)  # deterministic
    assert weights_hash(save_checkpoint(tmp_path / "e", net(1))) != weights_hash(ckpt)


def test_the_manifest_records_the_weights_hash(built):
    path, _, before, _ = built
    assert fmt.read_manifest(path)["model"]["weights_hash"] == before
    assert Index.load(path).weights_hash == before


def test_a_retrained_checkpoint_is_refused_naming_both_hashes(built, folder):
    path, ckpt, before, after = built
    query = next(folder.rglob("*.png"))
    with pytest.raises(ModelMismatchError, match=f"sha256 {after}.*sha256 {before}"):
        Index.load(path, model=ckpt)
    lazy = Index.load(path)  # the index's own checkpoint, loaded on the first image query
    with pytest.raises(ModelMismatchError, match=f"sha256 {after}.*sha256 {before}"):
        lazy.search(query, k=1)
    # a model object without a checkpoint directory can only be checked by architecture
    assert len(Index.load(path, model=net(1)).search(query, k=2).ids[0]) == 2


def test_query_with_a_retrained_checkpoint_is_one_line_and_exit_2(built, folder, capsys):
    path, ckpt, before, after = built
    query = str(next(folder.rglob("*.png")))
    for extra in ([], ["--model", str(ckpt)]):
        assert main(["query", str(path), query, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and before in err and after in err, err


def test_include_model_copies_weights_and_config_but_never_training_state(tmp_path, folder):
    ckpt = save_checkpoint(tmp_path / "ckpt", net(0), state={"step": 3, "optimizer": {}})
    assert (ckpt / "train_state.safetensors").is_file()
    index = Index.build(ckpt, folder, progress=False)
    path = index.save(tmp_path / "idx", include_model=True)
    manifest = fmt.read_manifest(path)
    assert manifest["model"]["checkpoint"] == "model"
    assert {"model/model.safetensors", "model/config.json"} <= set(manifest["files"])  # checksummed
    folder_v = next(p for p in path.iterdir() if p.name.startswith("v"))
    assert sorted(p.name for p in (folder_v / "model").iterdir()) == ["config.json", "model.safetensors"]
    loaded = Index.load(path)
    query = next(folder.rglob("*.png"))
    assert loaded.search(query, k=1).distances[0, 0] == pytest.approx(0, abs=1e-5)
    save_checkpoint(tmp_path / "ckpt", net(1))  # the original changes: the copy inside still works
    assert Index.load(path).search(query, k=1).distances[0, 0] == pytest.approx(0, abs=1e-5)
    with pytest.raises(ModelMismatchError, match="changed since the index was built"):
        index.save(tmp_path / "idx2", include_model=True)
