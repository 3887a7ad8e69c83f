"""ShardedFlatIndex: exact search over memory-mapped shards, equal to one FlatIndex over all the rows;
Index.load of a sharded embedding run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deeprank import Index
from deeprank.data import export_image_folder, load_fashion_mnist
from deeprank.embedding import embed_folder
from deeprank.embedding.sharded_run import embed_to_shards
from deeprank.errors import IndexFormatError
from deeprank.index import FlatIndex
from deeprank.index.backend import Backend
from deeprank.index.shards import ShardedFlatIndex, ShardedVectors
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import save_checkpoint
from deeprank.ops.reference import topk_reference


def write_shards(tmp_path, x, sizes):
    """``x`` cut into ``.npy`` files of ``sizes`` rows (zeros allowed)."""
    paths, first = [], 0
    for i, n in enumerate(sizes):
        path = tmp_path / f"part{i}.npy"
        np.save(path, x[first : first + n])
        paths.append(path)
        first += n
    assert first == x.shape[0]
    return paths


def with_ties(rng, n, d):
    """Rows with exact duplicates spread over the whole range (ties across shard boundaries)."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    if n > 2:
        x[n // 2 :: 3] = x[1]
        x[-1] = x[0]
    return x


def assert_same_answers(sharded, flat, q, k):
    d1, k1 = sharded.search(q, k)
    d2, k2 = flat.search(q, k)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(k1, k2)


@pytest.mark.parametrize("sizes", [[1], [7, 0, 13, 1, 20], [20, 21], [1] * 9])
def test_search_equals_one_flat_index_and_the_reference(tmp_path, rng, sizes):
    n, d = sum(sizes), 5
    x = with_ties(rng, n, d)
    sharded = ShardedFlatIndex.from_files(write_shards(tmp_path, x, sizes))
    flat = FlatIndex(x)
    assert isinstance(sharded, Backend) and len(sharded) == n and sharded.dim == d
    np.testing.assert_array_equal(sharded.keys, np.arange(n))
    q = np.concatenate([rng.standard_normal((6, d)).astype(np.float32), x[:3]])
    for k in sorted({1, min(2, n), min(5, n), n}):
        assert_same_answers(sharded, flat, q, k)
        dist, _ = sharded.search(q, k)
        np.testing.assert_allclose(dist, topk_reference(q, x, k)[0], rtol=3e-7, atol=1e-6)
    _, keys = sharded.search(x[:1], n)
    tied = np.flatnonzero((x == x[0]).all(axis=1))
    assert keys[0, : tied.size].tolist() == tied.tolist()  # equal vectors come back in row order


def test_k_is_checked_and_queries_validated(tmp_path, rng):
    x = rng.standard_normal((10, 4)).astype(np.float32)
    sharded = ShardedFlatIndex.from_files(write_shards(tmp_path, x, [4, 6]))
    with pytest.raises(ValueError, match="k"):
        sharded.search(x[:1], 11)
    with pytest.raises(ValueError, match="queries"):
        sharded.search(x[0], 1)
    with pytest.raises(ValueError, match="non-empty"):
        ShardedFlatIndex([])


def test_shards_stay_memory_mapped_until_changed(tmp_path, rng):
    x = rng.standard_normal((30, 3)).astype(np.float32)
    paths = write_shards(tmp_path, x, [10, 10, 10])
    before = [p.read_bytes() for p in paths]
    sharded = ShardedFlatIndex.from_files(paths)
    assert all(isinstance(p.vectors.base, np.memmap) for p in sharded.parts)
    flat = FlatIndex(x)
    sharded.remove([12, 3])
    flat.remove([12, 3])
    kinds = [isinstance(p.vectors.base, np.memmap) for p in sharded.parts]
    assert kinds == [False, False, True]  # only the two shards that lost rows were copied
    new = rng.standard_normal((4, 3)).astype(np.float32)
    sharded.add(new)
    flat.add(new)
    sharded.add(new[:1] + 1, keys=[100])
    flat.add(new[:1] + 1, keys=[100])
    np.testing.assert_array_equal(sharded.keys, flat.keys)
    q = rng.standard_normal((5, 3)).astype(np.float32)
    for k in (1, 7, len(flat)):
        assert_same_answers(sharded, flat, q, k)
    with pytest.raises(KeyError):
        sharded.remove([3])
    with pytest.raises(ValueError, match="already"):
        sharded.add(new[:1], keys=[100])
    assert sharded.remove(list(range(20, 30))) == 10  # a whole shard emptied: dropped
    flat.remove(list(range(20, 30)))
    assert_same_answers(sharded, flat, q, 5)
    assert [p.read_bytes() for p in paths] == before  # the files are never written


def test_save_writes_one_array_flat_index_reads(tmp_path, rng):
    x = rng.standard_normal((25, 6)).astype(np.float32)
    sharded = ShardedFlatIndex.from_files(write_shards(tmp_path, x, [5, 0, 20]))
    out = tmp_path / "saved"
    out.mkdir()
    assert sharded.save(out) == ["embeddings.npy"]
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), x)
    sharded.remove([0])
    assert sharded.save(out) == ["embeddings.npy", "keys.npy"]
    loaded = FlatIndex.load(out)
    np.testing.assert_array_equal(loaded.keys, np.arange(1, 25))
    np.testing.assert_array_equal(loaded.vectors, x[1:])


def test_sharded_vectors_index_like_an_array(tmp_path, rng):
    x = rng.standard_normal((17, 3)).astype(np.float32)
    v = ShardedFlatIndex.from_files(write_shards(tmp_path, x, [4, 0, 8, 5])).vectors
    assert isinstance(v, ShardedVectors) and v.shape == (17, 3) and len(v) == 17
    rows = np.array([16, 0, 4, 3, 11, 12, 4])
    for key in (0, -1, 12, slice(None), slice(2, 15, 3), slice(None, None, -1), rows, x[:, 0] > 0):
        np.testing.assert_array_equal(v[key], x[key])
    np.testing.assert_array_equal(v[rows.reshape(7, 1)], x[rows.reshape(7, 1)])
    np.testing.assert_array_equal(v[3, 1:], x[3, 1:])
    np.testing.assert_array_equal(np.asarray(v), x)
    with pytest.raises(IndexError):
        v[17]
    with pytest.raises(IndexError):
        v[np.array([0.5])]


# ---------------------------------------------------------------------- a sharded run opened by Index


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    model = MultiScaleNet(in_channels=1, embedding_dim=16).eval()
    base = tmp_path_factory.mktemp("run")
    checkpoint = save_checkpoint(base / "ckpt", model)
    images, labels = load_fashion_mnist("test")
    export_image_folder(images[:37], labels[:37], base / "imgs")
    (base / "imgs" / "Bag" / "broken.png").write_bytes(b"junk")
    embed_to_shards(checkpoint, base / "imgs", base / "shards", shard_size=8, batch_size=5, progress=False)
    return base, checkpoint


def test_index_opens_a_run_like_a_built_index(run):
    base, checkpoint = run
    sharded = Index.load(base / "shards")
    built = Index.build(checkpoint, base / "imgs", progress=False, workers=0)
    assert isinstance(sharded._exact, ShardedFlatIndex) and len(sharded._exact.parts) == 5
    assert sharded.ids == built.ids and sharded.paths == built.paths and len(sharded) == 37
    assert sharded.skipped == built.skipped and len(sharded.skipped) == 1
    assert sharded.model_hash == built.model_hash and sharded.dim == 16
    np.testing.assert_allclose(np.asarray(sharded.embeddings), built.embeddings, atol=1e-6)
    q = np.asarray(built.embeddings[[0, 9, 36]])
    np.testing.assert_array_equal(sharded.search(q, 37).indices, built.search(q, 37).indices)
    some = sharded.ids[11]
    assert sharded.search(sharded.path_of(some), k=1).ids[0][0] == some  # by image: the run's model
    np.testing.assert_array_equal(sharded.vector(some), sharded.embeddings[11])


def test_run_saved_as_an_index_and_changed(run, tmp_path):
    base, _ = run
    sharded = Index.load(base / "shards", verify=False)
    sharded.save(tmp_path / "idx")
    plain = Index.load(tmp_path / "idx")
    assert plain.ids == sharded.ids
    np.testing.assert_array_equal(plain.embeddings, np.asarray(sharded.embeddings))
    removed = sharded.ids[:3]
    sharded.remove(removed)
    sharded.add(np.ones((1, 16), np.float32), ids=["extra"])
    assert len(sharded) == 35 and sharded.search(np.ones(16, np.float32), k=1).ids[0][0] == "extra"
    assert Index.load(base / "shards").ids[:3] == removed  # the run itself is unchanged


def test_damaged_and_unfinished_runs_are_refused(run, tmp_path):
    import shutil

    base, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(base / "shards", copy)
    data = bytearray((copy / "shard-00002.npy").read_bytes())
    data[-1] ^= 0xFF
    (copy / "shard-00002.npy").write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="shard-00002.npy does not match its checksum"):
        Index.load(copy)
    (copy / "shard-00002.npy").write_bytes(bytes(data[:-4]))
    with pytest.raises(IndexFormatError, match="truncated"):
        Index.load(copy, verify=False)
    (copy / "shard-00002.json").unlink()
    with pytest.raises(IndexFormatError, match="unfinished embedding run: 1 of 5 shards missing"):
        Index.load(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(IndexFormatError, match="version 99"):
        Index.load(copy)


def test_run_vectors_equal_embed_folder(run):
    base, checkpoint = run
    from deeprank.models.checkpoint import resolve_model

    model, _ = resolve_model(checkpoint)
    emb, files, skipped = embed_folder(model, base / "imgs", batch_size=5, workers=0)
    sharded = Index.load(base / "shards")
    np.testing.assert_allclose(np.asarray(sharded.embeddings), emb, atol=1e-6)
    assert sharded.paths == [str(f.resolve()) for f in files]
