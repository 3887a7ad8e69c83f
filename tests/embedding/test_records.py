"""Embedding hf:PATH and WebDataset shards (deeprank.embedding.records, api.build_index, the CLI)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from containers import COLORS, png_bytes, samples, write_shard

from deeprank import cli
from deeprank.api import build_index
from deeprank.data.webdataset import open_shards
from deeprank.embedding import embed_images
from deeprank.embedding.records import embed_records
from deeprank.index import Index
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import load_model, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("rec") / "ckpt", MultiScaleNet(embedding_dim=8))


def test_records_embed_like_the_same_files(checkpoint, tmp_path):
    members = samples(5) + [("bad.png", b"garbage"), ("nolabel.png", png_bytes(COLORS[0]))]
    shard = write_shard(tmp_path / "s.tar", members)
    net, _ = load_model(checkpoint)
    result = embed_records(net, open_shards(str(shard), labelled=False), batch_size=2)
    assert result.kept.tolist() == [0, 1, 2, 3, 4, 6] and result.skipped[0][0] == "s.tar/bad.png"
    files = []
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(COLORS[i % 3]))
        files.append(tmp_path / f"{i}.png")
    expected = embed_images(net, files, workers=0).embeddings
    np.testing.assert_allclose(result.embeddings[:5], expected, rtol=1e-5, atol=1e-6)


def test_build_index_of_a_parquet_dataset_searches_and_saves(checkpoint, tmp_path):
    images = [png_bytes(COLORS[i % 3]) for i in range(6)]
    pq.write_table(pa.table({"image": images}), tmp_path / "d.parquet")
    index = build_index(checkpoint, f"hf:{tmp_path / 'd.parquet'}", device="cpu")
    assert index.ids == [f"d.parquet[{i}]" for i in range(6)] and index.checkpoint == checkpoint.resolve()
    assert index.search(index.vector("d.parquet[3]"), k=3).ids[0][0] in {"d.parquet[0]", "d.parquet[3]"}
    index.save(tmp_path / "idx")
    assert len(Index.load(tmp_path / "idx")) == 6


def test_cli_embed_and_index_take_shards_and_hf(capsys, checkpoint, tmp_path):
    shard = write_shard(tmp_path / "s.tar", samples(4))
    assert (
        cli.main(["embed", "-m", str(checkpoint), str(shard), "-o", str(tmp_path / "e"), "--no-progress"])
        == 0
    )
    assert np.load(tmp_path / "e" / "embeddings.npy").shape == (4, 8)
    pq.write_table(pa.table({"img": [png_bytes(c) for c in COLORS]}), tmp_path / "d.parquet")
    argv = [
        "index",
        "-m",
        str(checkpoint),
        f"hf:{tmp_path / 'd.parquet'}",
        "-o",
        str(tmp_path / "i"),
        "--no-progress",
    ]
    assert cli.main([*argv, "--image-column", "img"]) == 0
    assert "indexed 3 images" in capsys.readouterr().out
    assert cli.main(argv) == 2  # no column "image"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--image-column 'image'" in err[0]
