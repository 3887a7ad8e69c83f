"""Index: ids over keyed backends: search, add/remove, approximate backends, save/load round trips, export."""

import json

import numpy as np
import pytest
import torch
from crash import every_kill

from deeprank import FlatIndex, Index
from deeprank.errors import DeeprankError, IndexFormatError, ModelMismatchError
from deeprank.index import format as fmt
from deeprank.io import sha256_file
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
    for k in (0, 6):
        with pytest.raises(ValueError, match=r"between 1 and the number of items in the index \(5\)"):
            index.search(np.zeros(3, np.float32), k=k)
    with pytest.raises(TypeError, match="k must be an int"):
        index.search(np.zeros(3, np.float32), k=2.0)
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
    manifest = fmt.read_manifest(path)
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
    assert len(loaded.search(q, 4).ids) == 3  # the loaded index still searches its (replaced) version


def test_save_refuses_to_replace_other_folders(tmp_path, rng):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(DeeprankError, match="not a deeprank index"):
        make_index(rng).save(tmp_path / "photos")
    assert (tmp_path / "photos" / "cat.jpg").exists()


@pytest.fixture
def saved(tmp_path, rng):
    return make_index(rng, n=20, d=5).save(tmp_path / "idx")


def folder_of(root):
    return root / json.loads((root / fmt.POINTER).read_text())["directory"]


def rewrite_manifest(root, change):
    """Change the manifest and re-sign it in the pointer."""
    import hashlib

    folder = folder_of(root)
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    data = json.dumps(manifest).encode()
    (folder / "manifest.json").write_bytes(data)
    (root / fmt.POINTER).write_bytes(fmt._pointer_bytes(folder.name, hashlib.sha256(data).hexdigest()))


def test_load_surfaces_format_errors(saved):
    f = folder_of(saved) / "embeddings.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="checksum"):
        Index.load(saved)
    assert len(Index.load(saved, verify=False)) == 20  # sizes and headers still checked
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(IndexFormatError, match="truncated"):
        Index.load(saved, verify=False)


def test_embeddings_not_matching_the_manifest(saved):
    rewrite_manifest(saved, lambda m: m.update(dim=6))
    with pytest.raises(
        IndexFormatError, match=r"holds float32 \(20, 5\); the manifest says float32 \(20, 6\)"
    ):
        Index.load(saved)


def test_items_not_matching_embeddings(saved):
    items = json.loads((folder_of(saved) / "items.json").read_text())
    items["ids"] = items["ids"][:-1]
    text = json.dumps(items)
    (folder_of(saved) / "items.json").write_text(text)
    rewrite_manifest(saved, lambda m: m["files"]["items.json"].update(bytes=len(text)))
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
    assert meta["files"]["embeddings.npy"]["sha256"] == sha256_file(tmp_path / "out" / "embeddings.npy")
    with pytest.raises(ValueError, match="format"):
        index.export(tmp_path / "out", format="csv")
    index.remove(["x0"])
    index.export(tmp_path / "out")  # an earlier export is replaced as a whole
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())["count"] == 11
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(DeeprankError, match="not a deeprank export"):
        index.export(tmp_path / "mine")


def read_export(folder):
    """The ids of a whole export (every file matching metadata.json), else an AssertionError."""
    meta = json.loads((folder / "metadata.json").read_text())
    for name, facts in meta["files"].items():
        assert sha256_file(folder / name) == facts["sha256"], f"{name} does not belong to metadata.json"
    assert np.load(folder / "embeddings.npy").shape[0] == meta["count"] == len(meta["ids"])
    return meta["ids"]


def test_an_export_killed_at_any_step_leaves_the_old_or_the_new_one(tmp_path, rng):
    from deeprank.io import exchange_paths

    old, new = make_index(rng, n=8, d=3), make_index(rng, n=5, d=3, ids=list("abcde"))
    target = tmp_path / "out"
    old.export(target)
    probe = [tmp_path / "p", tmp_path / "q"]
    for p in probe:
        p.mkdir()
    if not exchange_paths(*probe):
        pytest.skip("without an atomic exchange a kill between two renames leaves OUT.old only")

    def check(step):
        assert read_export(target) in (old.ids, new.ids), f"killed at step {step}"

    assert every_kill(lambda: new.export(target), check) >= 3
    new.export(target)  # and the next export cleans what the killed ones left
    assert read_export(target) == new.ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "p", "q"]


def test_a_save_killed_at_any_step_leaves_the_old_or_the_new_index(tmp_path, rng):
    old, new = make_index(rng, n=8, d=3), make_index(rng, n=5, d=3, ids=list("abcde"))
    path = old.save(tmp_path / "idx")
    seen = set()

    def check(step):
        loaded = Index.load(path)
        want = old if loaded.ids == old.ids else new
        assert loaded.ids == want.ids, f"killed at step {step}"
        np.testing.assert_array_equal(loaded.embeddings, want.embeddings)
        seen.add(len(loaded))

    assert every_kill(lambda: new.save(path), check) >= 8
    assert seen == {8, 5}


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


def test_ids_follow_keys_through_removals_and_a_save(tmp_path, rng):
    vectors = rng.normal(size=(30, 5)).astype(np.float32)
    ids = [f"v{i}" for i in range(30)]
    index = Index.from_vectors(vectors, ids=ids)
    index.remove(["v0", "v7", "v8"])
    index.add(vectors[7] + 1e-3, ids=["near7"])
    kept = [i for i in range(30) if i not in (0, 7, 8)]
    rows = np.concatenate([vectors[kept], vectors[7:8] + 1e-3])
    names = [ids[i] for i in kept] + ["near7"]
    q = rng.normal(size=(6, 5)).astype(np.float32)
    res = index.search(q, 4)
    _, want = topk_reference(q, rows, 4)
    np.testing.assert_array_equal(res.indices, want)
    assert res.ids == [[names[j] for j in row] for row in want]
    assert index.search(vectors[7], 1).ids == [["near7"]]
    np.testing.assert_array_equal(index.embeddings, rows)
    np.testing.assert_array_equal(index.keys, [*kept, 30])  # keys are never renumbered
    # Keys are no longer row positions after the removals: the save records them in keys.npy.
    index.save(tmp_path / "idx")
    assert set(fmt.read_manifest(tmp_path / "idx")["files"]) == {
        "embeddings.npy",
        "keys.npy",
        "items.json",
    }
    np.testing.assert_array_equal(np.load(folder_of(tmp_path / "idx") / "embeddings.npy"), rows)  # row i
    loaded = Index.load(tmp_path / "idx")
    assert loaded.ids == names and loaded.search(q, 4).ids == res.ids
    np.testing.assert_array_equal(loaded.keys, index.keys)
    loaded.add(vectors[0], ids=["back"])
    assert loaded.search(vectors[0], 1).ids == [["back"]]


def test_model_hash_is_computed_once(rng, monkeypatch):
    import deeprank.index.index as index_module

    calls = []
    real = index_module.config_hash
    monkeypatch.setattr(index_module, "config_hash", lambda c: calls.append(c) or real(c))

    class Model(torch.nn.Module):
        config = {"preset": "small", "embedding_dim": 3}
        embedding_dim = 3

    index = Index(rng.normal(size=(4, 3)).astype(np.float32), model=Model())
    assert len(calls) == 1 and index.model_hash == real(Model.config)
    assert index.model_config == Model.config


def test_any_backend_serves_approximate_search(tmp_path, rng):
    index = make_index(rng, n=40, d=6)
    q = rng.normal(size=(5, 6)).astype(np.float32)
    with pytest.raises(DeeprankError, match="no approximate index"):
        index.search(q, 3, approximate=True)
    exact_copy = FlatIndex(np.array(index.embeddings), index.keys)  # interchangeable: exact in the slot
    report = index.set_approximate(exact_copy, recall_queries=10, k=4)
    assert report["recall@4"] == 1.0 and report["queries"] == 10
    np.testing.assert_array_equal(index.search(q, 3, approximate=True).indices, index.search(q, 3).indices)
    with pytest.raises(DeeprankError, match="cannot store a FlatIndex as its approximate backend"):
        index.save(tmp_path / "idx")
    with pytest.raises(ValueError, match="holds 3 vectors"):
        index.set_approximate(FlatIndex(np.zeros((3, 6), np.float32)))
    index.add(q[:1], ids=["new"])  # changes reach every backend
    assert index.search(q[0], 1, approximate=True).ids == [["new"]]
    index.remove(["new"])
    assert len(index.approximate_index) == 40


def test_approximate_backend_follows_adds_and_is_dropped_on_removal(tmp_path, rng):
    pytest.importorskip("faiss")
    index = make_index(rng, n=300, d=8)
    index.build_approximate("hnsw", recall_queries=50, k=5)
    extra = rng.normal(size=(5, 8)).astype(np.float32) * 10
    index.add(extra, ids=[f"x{i}" for i in range(5)])  # HNSW takes new vectors after its build
    assert len(index.approximate_index) == 305
    # ef_search over the whole graph: HNSW's greedy walk may miss an outlier at its default width.
    found = index.search(extra, 1, approximate=True, ef_search=400).ids
    assert found == [[f"x{i}"] for i in range(5)]
    assert index.approximate_recall(queries=100, k=5)["recall@5"] > 0.9
    index.remove(["x0"])  # FAISS cannot delete: the approximate backend is dropped, exact search goes on
    assert index.approximate_index is None and len(index) == 304
    with pytest.raises(DeeprankError, match="build_approximate"):
        index.search(extra, 1, approximate=True)
    # Rebuilt after the removal (keys are no longer row positions), saved and loaded: same answers.
    index.build_approximate("hnsw", recall_queries=50, k=5)
    expect = index.search(extra, 3, approximate=True, ef_search=400)
    assert expect.ids[1][0] == "x1"
    loaded = Index.load(index.save(tmp_path / "idx"))
    assert set(fmt.read_manifest(tmp_path / "idx")["files"]) == {
        "embeddings.npy",
        "keys.npy",
        "items.json",
        "approximate.faiss",
        "approximate.keys.npy",
    }
    got = loaded.search(extra, 3, approximate=True, ef_search=400)
    assert got.ids == expect.ids and np.array_equal(got.indices, expect.indices)


def test_an_ivf_backend_follows_removals_and_an_on_disk_one_is_saved_and_reopened(tmp_path, rng):
    pytest.importorskip("faiss")
    vectors = rng.normal(size=(800, 8)).astype(np.float32)
    index = Index.from_vectors(vectors, ids=[f"v{i}" for i in range(800)])
    report = index.build_approximate("IVF8,Flat", nprobe=8, on_disk=True, recall_queries=50, k=5)
    assert report["recall@5"] == 1.0 and report["on_disk"]  # every list probed: exact
    assert index.remove(["v0", "v1"]) == 2 and len(index.approximate_index) == 798  # kept, not dropped
    q = vectors[:5] + 1e-3
    expect = index.search(q, 3)
    assert index.search(q, 3, approximate=True).ids == expect.ids
    loaded = Index.load(index.save(tmp_path / "idx"))
    entry = fmt.read_manifest(tmp_path / "idx")["backends"]["approximate"]
    assert entry == {"backend": "faiss", "kind": "IVF8,Flat", "on_disk": True, "nprobe": 8}
    assert loaded.search(q, 3, approximate=True).ids == expect.ids
    # One list probed: a stored vector's own list holds it, so a query next to it still finds it
    # (the removed v0/v1 are not asked: their nearest neighbours may sit in other lists).
    near = vectors[2:7] + 1e-4
    assert loaded.search(near, 1, approximate=True, nprobe=1).ids == [[f"v{i}"] for i in range(2, 7)]
    loaded.add(vectors[:1], ids=["back"])  # the mapped lists are read-only: the backend is dropped
    assert loaded.approximate_index is None
    files = loaded.export(tmp_path / "out", format="faiss")
    assert [f.name for f in files] == ["index.faiss", "metadata.json"]
