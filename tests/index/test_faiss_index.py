"""FaissIndex, the approximate keyed backend: recall against exact search, keys, adds after build, files."""

from __future__ import annotations

import numpy as np
import pytest

from deeprank.index import Backend, FaissIndex, FlatIndex
from deeprank.index.backend import recall_against_exact, recall_at_k

faiss = pytest.importorskip("faiss")


@pytest.fixture
def data(rng):
    x = rng.standard_normal((600, 16)).astype(np.float32)
    q = rng.standard_normal((50, 16)).astype(np.float32)
    keys = rng.permutation(600) * 5 + 3  # not row positions: answers must come back as these keys
    return x, q, keys


def test_recall_at_k_hand_example():
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 5]])) == 0.75
    with pytest.raises(ValueError, match="same shape"):
        recall_at_k(np.zeros((2, 3)), np.zeros((2, 2)))


@pytest.mark.parametrize("kind, floor", [("hnsw", 0.9), ("ivfpq", 0.45), ("flat", 0.99)])
def test_recall_against_exact_with_keys(data, kind, floor):
    x, q, keys = data
    ann = FaissIndex.build(x, keys, kind)
    assert isinstance(ann, Backend) and len(ann) == 600 and ann.dim == 16 and ann.info["kind"] == kind
    dist, got = ann.search(q, 10)
    assert dist.dtype == np.float32 and got.dtype == np.int64 and got.shape == (50, 10)
    assert np.isin(got[got >= 0], keys).all()
    report = recall_against_exact(FlatIndex(x, keys), ann, q, 10)
    assert set(report) == {"recall@10", "queries", "exact_seconds", "approximate_seconds"}
    assert floor <= report["recall@10"] <= 1.0 and report["queries"] == 50
    if kind == "flat":  # exact: each answer is at the exact distance of its rank (ties may swap)
        row_of = {int(key): r for r, key in enumerate(keys)}
        rows = np.vectorize(row_of.__getitem__)(got)
        true = ((q[:, None, :].astype(np.float64) - x[rows]) ** 2).sum(axis=2)
        np.testing.assert_allclose(true, FlatIndex(x, keys).search(q, 10)[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dist, true, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_add_after_build(data, kind):
    x, q, keys = data
    ann = FaissIndex.build(x[:500], keys[:500], kind)
    ann.add(x[500:], keys[500:])
    assert len(ann) == 600
    exact = FlatIndex(x, keys)
    report = recall_against_exact(exact, ann, x[500:], 5)  # the added vectors as queries
    assert report["recall@5"] >= (0.9 if kind == "hnsw" else 0.45)
    _, got = ann.search(x[500:], 1)
    found_self = np.mean(got[:, 0] == keys[500:])
    assert found_self >= (0.95 if kind == "hnsw" else 0.8)
    ann.add(x[:1])  # default keys continue after the largest
    assert ann.search(x[:1], 2)[1][0].tolist().count(keys.max() + 1) == 1
    with pytest.raises(ValueError, match="already in the index"):
        ann.add(x[:1], keys[:1])
    with pytest.raises(ValueError, match="D=16"):
        ann.add(np.zeros((1, 3), np.float32))


def test_remove_is_not_supported(data):
    x, _, keys = data
    ann = FaissIndex.build(x, keys, "hnsw")
    with pytest.raises(NotImplementedError, match="cannot remove"):
        ann.remove(keys[:1])
    assert len(ann) == 600


@pytest.mark.parametrize("identity", [True, False])
def test_save_load_round_trip(tmp_path, data, identity):
    x, q, keys = data
    ann = FaissIndex.build(x, None if identity else keys, "hnsw")
    files = ann.save(tmp_path)
    assert files == (["approximate.faiss"] if identity else ["approximate.faiss", "approximate.keys.npy"])
    loaded = FaissIndex.load(tmp_path)
    assert loaded.info["kind"] == "hnsw" and len(loaded) == 600
    np.testing.assert_array_equal(loaded.search(q, 7)[1], ann.search(q, 7)[1])
    # The FAISS file itself is a plain index: row i is the i-th vector added.
    raw = faiss.read_index(str(tmp_path / "approximate.faiss"))
    assert type(raw).__name__ == "IndexHNSWFlat"
    want = np.arange(600) if identity else keys
    np.testing.assert_array_equal(want[raw.search(q, 7)[1]], ann.search(q, 7)[1])


def test_write_and_load_errors(tmp_path, data):
    from deeprank.errors import IndexFormatError

    x, _, _ = data
    path = FaissIndex.build(x, kind="flat").write(tmp_path / "out.faiss")
    assert faiss.read_index(str(path)).ntotal == 600
    (tmp_path / "approximate.faiss").write_bytes(b"not faiss")
    with pytest.raises(IndexFormatError, match="not a readable FAISS index"):
        FaissIndex.load(tmp_path)
    FaissIndex.build(x, kind="flat").save(tmp_path)
    np.save(tmp_path / "approximate.keys.npy", np.arange(5))
    with pytest.raises(IndexFormatError, match="5 keys"):
        FaissIndex.load(tmp_path)


def test_build_rejects_bad_arguments(data):
    x, _, _ = data
    with pytest.raises(ValueError, match="kind must be one of"):
        FaissIndex.build(x, kind="lsh")
    with pytest.raises(TypeError, match="unknown options"):
        FaissIndex.build(x, kind="hnsw", depth=3)
    with pytest.raises(ValueError, match="must divide"):
        FaissIndex.build(x, kind="ivfpq", m=5)
    with pytest.raises(ValueError, match="non-empty"):
        FaissIndex.build(np.empty((0, 16), np.float32), kind="hnsw")
    with pytest.raises(ValueError, match="2 keys for 600"):
        FaissIndex.build(x, keys=[1, 2], kind="flat")


@pytest.fixture
def clustered(rng):
    """Vectors in 40 clusters (IVF/PQ behave as on real embeddings) and queries near them."""
    centres = rng.standard_normal((40, 32)).astype(np.float32) * 4
    x = centres[rng.integers(0, 40, 6000)] + rng.standard_normal((6000, 32)).astype(np.float32)
    q = centres[rng.integers(0, 40, 60)] + rng.standard_normal((60, 32)).astype(np.float32)
    return x, q, rng.permutation(6000).astype(np.int64) * 7 + 1


@pytest.mark.parametrize(
    "factory, floor",
    [("HNSW16", 0.9), ("IVF32,Flat", 0.9), ("IVF32,PQ16x4", 0.3), ("IVF32_HNSW8,PQ16x4", 0.3)],
)
def test_factory_strings_against_the_float64_reference(clustered, factory, floor):
    from deeprank.ops.reference import topk_reference

    x, q, keys = clustered
    ann = (
        FaissIndex.build(x, keys, factory, train_size=2000, nprobe=8)
        if "IVF" in factory
        else (FaissIndex.build(x, keys, factory))
    )
    assert ann.info["kind"] == factory and len(ann) == 6000
    _, want_rows = topk_reference(q, x, 10)  # independent float64 exact answer
    dist, got = ann.search(q, 10)
    assert recall_at_k(got, keys[want_rows]) >= floor
    assert np.all(np.diff(dist, axis=1) >= -1e-4)  # ascending
    if "IVF" in factory:
        assert ann.info["train_vectors"] == 2000 and ann.search_params()["nprobe"] == 8


def test_nprobe_and_ef_search_at_query_time(clustered):
    x, q, keys = clustered
    exact = FlatIndex(x, keys)
    _, want = exact.search(q, 10)
    ivf = FaissIndex.build(x, keys, "IVF64,Flat", nprobe=1)
    low = recall_at_k(ivf.search(q, 10)[1], want)
    high = recall_at_k(ivf.search(q, 10, nprobe=64)[1], want)  # every list: exact
    assert high == 1.0 and low < high and ivf.search_params() == {"nprobe": 1}  # per call only
    ivf.set_search_params(nprobe=64)
    assert recall_at_k(ivf.search(q, 10)[1], want) == 1.0
    with pytest.raises(ValueError, match="ef_search does not apply"):
        ivf.search(q, 10, ef_search=16)
    with pytest.raises(ValueError, match="nprobe must be a positive integer"):
        ivf.set_search_params(nprobe=0)
    hnsw = FaissIndex.build(x, keys, "HNSW8", ef_search=4)
    assert hnsw.search_params() == {"ef_search": 4}
    assert recall_at_k(hnsw.search(q, 10, ef_search=256)[1], want) >= recall_at_k(hnsw.search(q, 10)[1], want)
    with pytest.raises(ValueError, match="nprobe does not apply"):
        hnsw.search(q, 10, nprobe=3)
    both = FaissIndex.build(x, keys, "IVF64_HNSW8,Flat")
    assert set(both.search_params()) == {"nprobe", "ef_search"}
    both.set_search_params(ef_search=99)
    assert both.search_params()["ef_search"] == 99


def test_ivf_removes_by_key_and_keeps_answering_in_keys(clustered):
    x, q, keys = clustered
    ann = FaissIndex.build(x, keys, "IVF32,Flat", nprobe=32)  # all lists: exact answers
    gone = keys[:100]
    assert ann.remove(gone) == 100 and len(ann) == 5900
    _, got = ann.search(x[:100], 1)
    assert not np.isin(got, gone).any()
    _, want = FlatIndex(x[100:], keys[100:]).search(q, 5)
    assert recall_at_k(ann.search(q, 5)[1], want) == 1.0
    with pytest.raises(KeyError):
        ann.remove(gone[:1])
    ann.add(x[:1], gone[:1])  # a removed key may come back
    assert ann.search(x[:1], 1)[1][0, 0] == gone[0]
    flat = FaissIndex.build(x[:50], keys[:50], "flat")
    assert flat.remove(keys[10:20]) == 10
    np.testing.assert_array_equal(flat.search(x[20:25], 1)[1][:, 0], keys[20:25])


def test_on_disk_ivf_is_memory_mapped_read_only(tmp_path, clustered):
    x, q, keys = clustered
    ann = FaissIndex.build(x, keys, "IVF32,PQ16x4", on_disk=True, nprobe=8)
    expect = ann.search(q, 10)
    assert sorted(ann.save(tmp_path)) == ["approximate.faiss", "approximate.ivfdata", "approximate.keys.npy"]
    assert (tmp_path / "approximate.ivfdata").stat().st_size >= 6000 * (8 + 8)  # codes + ids
    np.testing.assert_array_equal(ann.search(q, 10)[1], expect[1])  # the live index is unchanged
    loaded = FaissIndex.load(tmp_path)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded.index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.read_only
    assert loaded.info["on_disk"] and loaded.search_params() == {"nprobe": 8}
    np.testing.assert_array_equal(loaded.search(q, 10)[1], expect[1])
    with pytest.raises(NotImplementedError, match="read-only"):
        loaded.add(x[:1], [0])
    with pytest.raises(NotImplementedError, match="read-only"):
        loaded.remove(keys[:1])
    again = tmp_path / "again"  # a loaded on-disk index saves again (its lists linked, not rewritten)
    again.mkdir()
    loaded.save(again)
    np.testing.assert_array_equal(FaissIndex.load(again).search(q, 10)[1], expect[1])
    with pytest.raises(ValueError, match="on_disk needs an IVF index"):
        FaissIndex.build(x, keys, "HNSW8", on_disk=True)


def test_bad_factory_strings_are_one_clear_error(data):
    x, _, _ = data
    with pytest.raises(ValueError, match="FAISS factory string, got 'IVF,,PQ'"):
        FaissIndex.build(x, kind="IVF,,PQ")
