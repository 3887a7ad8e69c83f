"""Index: search, add/remove, atomic save/load round trips, corrupted and mismatched files, export."""

import json

import numpy as np
import pytest

from deeprank import Index
from deeprank.errors import DeeprankError, IndexFormatError, ModelMismatchError
from deeprank.ops.reference import topk_reference


def make_index(rng, n=60, d=7, ids=None):
    return Index.from_vectors(rng.normal(size=(n, d)).astype(np.float32), ids=ids)


def test_search_matches_reference_and_maps_ids(rng):
    vectors = rng.normal(size=(50, 9)).astype(np.float32)
    ids = [f"item{i}" for i in range(50)]
    index = Index.from_vectors(vectors, ids=ids, paths=[f"/x/{i}.png" for i in range(50)])
    queries = rng.normal(size=(4, 9)).astype(np.float32)
    res = index.search(queries, k=5)
    want_d, want_i = topk_reference(queries, vectors, 5)
    np.testing.assert_array_equal(res.indices, want_i)
    np.testing.assert_allclose(res.distances, want_d, rtol=1e-4, atol=1e-4)
    assert res.ids[2] == [ids[j] for j in want_i[2]]
    hits = res.hits(1)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["path"] == f"/x/{want_i[1, 0]}.png" and hits[0]["id"] == f"item{want_i[1, 0]}"
    one = index.search(vectors[7], k=1)  # a single 1-D vector finds itself
    assert one.ids == [["item7"]] and one.distances[0, 0] == pytest.approx(0, abs=1e-5)
    assert index.path_of("item3") == "/x/3.png"


def test_k_larger_than_index_and_bad_queries(rng):
    index = make_index(rng, n=5, d=3)
    with pytest.raises(ValueError, match="larger than the index"):
        index.search(np.zeros(3, np.float32), k=6)
    with pytest.raises(ValueError, match="positive integer"):
        index.search(np.zeros(3, np.float32), k=0)
    with pytest.raises(ValueError, match="cannot search"):
        index.search(np.zeros((2, 4), np.float32), k=1)
    with pytest.raises(DeeprankError, match="no model"):
        index.search(np.zeros((1, 3, 8, 8), np.float32), k=1)  # images, but no model


def test_constructor_validates(rng):
    v = rng.normal(size=(3, 2))
    with pytest.raises(ValueError, match="unique"):
        Index.from_vectors(v, ids=["a", "a", "b"])
    with pytest.raises(ValueError, match="3 embeddings"):
        Index.from_vectors(v, ids=["a"])
    with pytest.raises(TypeError, match="str or int"):
        Index.from_vectors(v, ids=[1.5, 2.5, 3.5])
    with pytest.raises(ValueError, match="2-D"):
        Index.from_vectors(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        Index.from_vectors(np.array([[0.0, np.nan]]))


def test_add_and_remove(rng):
    index = make_index(rng, n=10, d=4)
    extra = rng.normal(size=(3, 4)).astype(np.float32)
    index.add(extra)
    assert len(index) == 13 and index.ids[-3:] == [10, 11, 12]
    assert index.search(extra[1], k=1).ids == [[11]]
    index.add(extra[0] + 100, ids=["far"])
    with pytest.raises(ValueError, match="already in the index"):
        index.add(extra[:1], ids=["far"])
    assert index.remove([0, 11, "far"]) == 3
    assert len(index) == 11 and 11 not in index.ids and "far" not in index.ids
    assert index.search(extra[1], k=1).ids != [[11]]
    with pytest.raises(KeyError):
        index.remove(["missing"])
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        index.add(np.zeros((2, 5)))


def test_save_load_round_trip(tmp_path, rng):
    ids = [f"a/{i}.png" for i in range(30)] + list(range(30, 40))
    index = make_index(rng, n=40, d=6, ids=ids)
    path = index.save(tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["dim"] == 6 and manifest["count"] == 40 and manifest["metric"] == "sqeuclidean"
    assert set(manifest["files"]) == {"embeddings.npy", "items.json"}
    loaded = Index.load(path)
    assert isinstance(loaded.embeddings, np.memmap)
    np.testing.assert_array_equal(np.asarray(loaded.embeddings), index.embeddings)
    assert loaded.ids == ids
    q = rng.normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_array_equal(loaded.search(q, 4).indices, index.search(q, 4).indices)
    # Saving over an existing index replaces it atomically (no temporary directories left behind).
    loaded.add(np.ones((1, 6), np.float32), ids=["new"])
    loaded.save(path)
    assert len(Index.load(path)) == 41
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_save_refuses_to_replace_other_folders(tmp_path, rng):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(DeeprankError, match="not a deeprank index"):
        make_index(rng).save(tmp_path / "photos")
    assert (tmp_path / "photos" / "cat.jpg").exists()


@pytest.fixture
def saved(tmp_path, rng):
    return make_index(rng, n=20, d=5).save(tmp_path / "idx")


def test_truncated_embeddings_fail_clearly(saved):
    f = saved / "embeddings.npy"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(IndexFormatError, match="truncated"):
        Index.load(saved)


def test_bad_checksum_fails_unless_verification_is_off(saved):
    f = saved / "embeddings.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="checksum"):
        Index.load(saved)
    assert len(Index.load(saved, verify=False)) == 20  # sizes and headers still checked


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(version=99), "format version 99"),
        (lambda m: m.update(dim=6), "manifest says float32"),
        (lambda m: m.update(format="other"), "not a deeprank index manifest"),
        (lambda m: m["files"].pop("items.json"), "does not list items.json"),
    ],
)
def test_manifest_mismatches_fail_clearly(saved, edit, message):
    manifest = json.loads((saved / "manifest.json").read_text())
    edit(manifest)
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match=message):
        Index.load(saved)


def test_missing_or_garbage_files(saved, tmp_path):
    with pytest.raises(FileNotFoundError):
        Index.load(tmp_path / "nope")
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        Index.load(tmp_path)
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="corrupt"):
        Index.load(saved)


def test_items_not_matching_embeddings(saved):
    items = json.loads((saved / "items.json").read_text())
    items["ids"] = items["ids"][:-1]
    text = json.dumps(items)
    (saved / "items.json").write_text(text)
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"]["items.json"]["bytes"] = len(text)
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="does not match the embeddings"):
        Index.load(saved, verify=False)


def test_query_index_against_reference_index(rng):
    ref = make_index(rng, n=30, d=4)
    queries = Index.from_vectors(np.asarray(ref.embeddings)[:5] + 1e-3, ids=list("abcde"))
    res = ref.search(queries, k=1)
    assert [r[0] for r in res.ids] == [0, 1, 2, 3, 4]
    with pytest.raises(ModelMismatchError, match="dimension"):
        ref.search(make_index(rng, n=3, d=5), k=1)


def test_export_npy(tmp_path, rng):
    index = make_index(rng, n=12, d=3, ids=[f"x{i}" for i in range(12)])
    files = index.export(tmp_path / "out")
    assert sorted(f.name for f in files) == ["embeddings.npy", "metadata.json"]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "embeddings.npy"), index.embeddings)
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["ids"] == index.ids and meta["dim"] == 3 and meta["metric"] == "sqeuclidean"
    with pytest.raises(ValueError, match="format"):
        index.export(tmp_path / "out", format="parquet")


def test_export_faiss_and_approximate_search(tmp_path, rng):
    faiss = pytest.importorskip("faiss")

    index = make_index(rng, n=600, d=16)
    index.export(tmp_path / "f", format="faiss")
    flat = faiss.read_index(str(tmp_path / "f" / "index.faiss"))
    q = rng.normal(size=(5, 16)).astype(np.float32)
    np.testing.assert_array_equal(flat.search(q, 5)[1], index.search(q, 5).indices)

    report = index.build_approximate("hnsw", recall_queries=100, k=5)
    assert report["kind"] == "hnsw" and report["recall@5"] > 0.9
    approx = index.search(q, 5, approximate=True)
    assert approx.indices.shape == (5, 5)
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx")
    assert loaded.approximate_index is not None
    np.testing.assert_array_equal(loaded.search(q, 5, approximate=True).indices, approx.indices)

    report = index.build_approximate("ivfpq", recall_queries=100, k=5)
    assert report["kind"] == "ivfpq" and 0.0 <= report["recall@5"] <= 1.0 and report["nlist"] >= 1
    with pytest.raises(ValueError, match="kind"):
        index.build_approximate("lsh")


def test_recall_at_k_hand_example():
    from deeprank.index.faiss_index import recall_at_k

    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 5]])) == 0.75
