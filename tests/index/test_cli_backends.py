"""The command line over backends: FAISS factory strings and query-time knobs, Milvus index/export."""

from __future__ import annotations

import json

import pytest
import torch

from deeprank import Index
from deeprank.cli import main
from deeprank.data import export_image_folder, load_fashion_mnist
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    images, labels = load_fashion_mnist("test")
    export_image_folder(images[:400], labels[:400], root / "images")
    torch.manual_seed(0)
    return root, save_checkpoint(root / "ckpt", MultiScaleNet(in_channels=1, embedding_dim=16))


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_faiss_factory_string_on_disk_and_nprobe(capsys, data, tmp_path):
    pytest.importorskip("faiss")
    root, ckpt = data
    idx = tmp_path / "idx"
    argv = ["index", "-m", ckpt, root / "images", "-o", idx, "--no-progress", "--approximate", "IVF8,Flat"]
    code, out, _ = run(capsys, *argv, "--nprobe", 2, "--on-disk", "--train-size", 300)
    assert code == 0 and '"train_vectors": 300' in out and '"nprobe": 2' in out
    assert Index.load(idx).approximate_index.info["on_disk"]
    query = sorted((root / "images" / "Coat").glob("*.png"))[0]
    code, out, _ = run(capsys, "query", idx, query, "--approximate", "--nprobe", 8, "-k", 3, "--json")
    assert code == 0 and json.loads(out)[0]["hits"][0]["distance"] == pytest.approx(0, abs=1e-5)
    code, _, err = run(capsys, "query", idx, query, "--approximate", "--ef-search", 8)
    assert code == 2 and "ef_search does not apply" in err
    code, _, err = run(capsys, "query", idx, query, "--nprobe", 8)
    assert code == 2 and "approximate search only" in err
    code, _, err = run(capsys, "index", "-m", ckpt, root / "images", "-o", tmp_path / "x", "--nprobe", 3)
    assert code == 2 and "need --approximate" in err


def test_milvus_index_query_with_filter_and_export(capsys, data, tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    root, ckpt = data
    idx, db = tmp_path / "photos", tmp_path / "m.db"
    code, out, _ = run(
        capsys, "index", "-m", ckpt, root / "images", "-o", idx, "--no-progress", "--milvus", db
    )
    assert code == 0 and '"collection": "photos"' in out and '"recall@10"' in out
    query = sorted((root / "images" / "Coat").glob("*.png"))[0]
    code, out, _ = run(
        capsys, "query", idx, query, "--approximate", "--filter", "folder == 'Bag'", "-k", 5, "--json"
    )
    hits = json.loads(out)[0]["hits"]
    assert code == 0 and len(hits) == 5 and all(h["id"].startswith("Bag/") for h in hits)
    code, out, _ = run(
        capsys, "embed", "-m", ckpt, root / "images", "-o", db, "--format", "milvus", "--collection", "emb"
    )
    assert code == 0 and "collection emb" in out
    code, _, err = run(capsys, "embed", "-m", ckpt, root / "images", "-o", db, "--format", "milvus")
    assert code == 2 and "--collection" in err
