"""MilvusIndex on a real Milvus Lite file: the backend contract against the float64 reference, upserts,
removal, metadata filters, and an Index that stores, reopens and serves a Milvus backend."""

from __future__ import annotations

import numpy as np
import pytest

from deeprank import Index
from deeprank.errors import DeeprankError
from deeprank.index import Backend
from deeprank.index import format as fmt
from deeprank.ops.reference import topk_reference

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from deeprank.index.milvus_index import MilvusIndex  # noqa: E402

CATEGORIES = ("shoes", "bags", "hats")


@pytest.fixture
def data(rng):
    x = rng.standard_normal((300, 12)).astype(np.float32)
    keys = rng.permutation(300).astype(np.int64) * 3 + 5
    meta = [{"category": CATEGORIES[i % 3], "year": 2000 + i % 7} for i in range(300)]
    return x, keys, meta, rng.standard_normal((7, 12)).astype(np.float32)


@pytest.fixture
def milvus(tmp_path, data):
    x, keys, meta, _ = data
    backend = MilvusIndex.create(tmp_path / "m.db", "items", 12, index_type="FLAT")  # exact
    backend.add(x, keys, ids=[f"i{j}" for j in range(300)], metadata=meta, batch_size=64)
    return backend


def test_search_matches_the_float64_reference(milvus, data):
    x, keys, _, q = data
    assert isinstance(milvus, Backend) and len(milvus) == 300 and milvus.dim == 12
    dist, got = milvus.search(q, 10)
    want_d, want_rows = topk_reference(q, x, 10)
    np.testing.assert_array_equal(got, keys[want_rows])  # a FLAT index searches exactly
    np.testing.assert_allclose(dist, want_d, rtol=1e-4, atol=1e-4)  # squared Euclidean
    assert dist.dtype == np.float32 and got.dtype == np.int64
    _, one = milvus.search(x[3:4], 1)  # k = 1 finds the vector itself
    assert one[0, 0] == keys[3]


def test_upserts_are_idempotent_and_removal_counts(milvus, data):
    x, keys, meta, _ = data
    milvus.add(x[:50], keys[:50], metadata=meta[:50])  # the same rows again: nothing duplicated
    assert len(milvus) == 300
    assert milvus.remove(keys[:10]) == 10 and len(milvus) == 290
    _, got = milvus.search(x[:10], 1)
    assert not np.isin(got, keys[:10]).any()
    with pytest.raises(KeyError, match="not in the collection"):
        milvus.remove(keys[:1])
    with pytest.raises(ValueError, match="D=12"):
        milvus.add(np.zeros((1, 3), np.float32), [1])


def test_metadata_filters_match_the_reference_on_the_subset(milvus, data):
    x, keys, meta, q = data
    shoes = np.array([m["category"] == "shoes" for m in meta])
    dist, got = milvus.search(q, 5, filter="category == 'shoes'")
    _, want = topk_reference(q, x[shoes], 5)
    np.testing.assert_array_equal(got, keys[shoes][want])
    few = milvus.search(q[:1], 100, filter="category == 'hats' and year == 2003")  # fewer than k
    n = sum(m["category"] == "hats" and m["year"] == 2003 for m in meta)
    assert (few[1][0] >= 0).sum() == n and np.isinf(few[0][0, n:]).all()
    with pytest.raises(ValueError, match="Milvus refused the search"):
        milvus.search(q, 3, filter="category ===")
    with pytest.raises(ValueError, match="reserved"):
        milvus.add(x[:1], [10_000], metadata=[{"vector": 1}])


def test_create_refuses_an_existing_collection_and_open_checks_it(tmp_path, milvus):
    with pytest.raises(DeeprankError, match="already has a collection"):
        MilvusIndex.create(milvus.uri, "items", 12)
    assert len(MilvusIndex.create(milvus.uri, "items", 12, overwrite=True)) == 0
    with pytest.raises(DeeprankError, match="no collection 'other'"):
        MilvusIndex(milvus.uri, "other")


def test_an_index_stores_reopens_and_filters_through_milvus(tmp_path, data):
    x, _, meta, q = data
    ids = [f"p{j}" for j in range(300)]
    index = Index.from_vectors(x, ids=ids, paths=[f"/img/{j}.png" for j in range(300)])
    report = index.to_milvus(
        tmp_path / "m.db", "photos", metadata=meta, recall_queries=50, k=5, index_type="FLAT", batch_size=100
    )
    assert report["recall@5"] == 1.0 and report["count"] == 300 and report["collection"] == "photos"
    path = index.save(tmp_path / "idx")
    entry = fmt.read_manifest(path)["backends"]["approximate"]
    assert entry == {
        "backend": "milvus",
        "uri": str((tmp_path / "m.db").resolve()),
        "collection": "photos",
        "dim": 12,
    }
    del index
    loaded = Index.load(path)
    assert isinstance(loaded.approximate_index, MilvusIndex)
    exact = loaded.search(q, 4)
    hits = loaded.search(q, 4, approximate=True)
    assert hits.ids == exact.ids
    shoes = loaded.search(q, 3, approximate=True, filter="category == 'shoes'")
    assert all(meta[int(i[1:])]["category"] == "shoes" for row in shoes.ids for i in row)
    with pytest.raises(ValueError, match="FlatIndex backend does not take filter|approximate search only"):
        loaded.search(q, 3, filter="category == 'shoes'")
    # changes reach the collection, ids, paths and metadata included
    loaded.add(x[:1] + 100, ids=["far"], metadata=[{"category": "hats", "year": 1999}])
    found = loaded.search(x[:1] + 100, 1, approximate=True, filter="year == 1999")
    assert found.ids == [["far"]]
    assert loaded.remove(["far", "p0"]) == 2 and len(loaded.approximate_index) == 299
    with pytest.raises(ValueError, match="nprobe"):
        loaded.search(q, 3, approximate=True, nprobe=4)


def test_export_to_milvus_without_attaching(tmp_path, rng):
    index = Index.from_vectors(rng.standard_normal((40, 6)).astype(np.float32))
    report = index.to_milvus(tmp_path / "e.db", "export", attach=False)
    assert report["count"] == 40 and index.approximate_index is None
    with pytest.raises(ValueError, match="kept only by a Milvus backend"):
        index.add(np.zeros((1, 6), np.float32), metadata=[{"a": 1}])


def test_serve_over_a_milvus_backend_says_so_in_health(tmp_path, data):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from deeprank.serve.server import serve_in_thread

    x, _, meta, _ = data
    index = Index.from_vectors(x, ids=[f"p{j}" for j in range(300)])
    index.to_milvus(tmp_path / "m.db", "served", metadata=meta, recall_queries=10, index_type="FLAT")
    path = index.save(tmp_path / "idx")
    for approximate, backend in ((False, "flat"), (True, "milvus")):
        with serve_in_thread(path, approximate=approximate) as url, httpx.Client(base_url=url) as c:
            health = c.get("/health").json()
            assert (health["backend"], health["approximate"]) == (backend, approximate)
            hits = c.post("/search", data={"id": "p9", "k": 4}).json()["hits"]
        assert [h["id"] for h in hits] == index.search(x[9], 4).ids[0] and hits[0]["id"] == "p9"
