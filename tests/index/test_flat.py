"""FlatIndex, the exact keyed backend: against the float64 reference, growth, removal, keys, memory maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deeprank
from deeprank.errors import IndexFormatError
from deeprank.index import FlatIndex, flat
from deeprank.index.backend import Backend
from deeprank.io import sha256_file
from deeprank.ops.reference import topk_reference


def random_case(rng, m, n, d):
    q = rng.standard_normal((m, d)).astype(np.float32)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return q, x


def assert_exact(index: FlatIndex, q: np.ndarray, x: np.ndarray, keys: np.ndarray, k: int) -> None:
    """``index`` (holding rows ``x`` under ``keys``) answers like the float64 reference."""
    dist, got = index.search(q, k)
    want_d, want_rows = topk_reference(q, x, k)
    assert dist.dtype == np.float32 and got.dtype == np.int64 and got.shape == (q.shape[0], k)
    # Distances are recomputed in float64 and rounded once: equal to the reference up to float32 rounding.
    np.testing.assert_allclose(dist, want_d, rtol=3e-7, atol=1e-6)
    row_of = {int(key): r for r, key in enumerate(keys)}
    rows = np.vectorize(row_of.__getitem__)(got)
    assert all(len(set(r)) == k for r in rows.tolist()), "a key came back twice"
    mine = ((q[:, None, :].astype(np.float64) - x[rows].astype(np.float64)) ** 2).sum(axis=2)
    np.testing.assert_allclose(mine, want_d, rtol=1e-6, atol=1e-6)  # each key really is at its rank
    # Where a reference distance is clear of its neighbours by more than float32 rounding, the keys are
    # those of the reference rows (within a float32 tie, rows go by index: the reference may differ).
    sep = np.diff(want_d, axis=1) > 1e-6 * np.abs(want_d[:, 1:]) + 1e-6
    clear = np.ones(want_d.shape, dtype=bool)
    clear[:, 1:] &= sep
    clear[:, :-1] &= sep
    np.testing.assert_array_equal(got[clear], keys[want_rows][clear])
    assert clear.mean() > 0.9  # the check above covers nearly everything


def test_is_a_backend():
    assert isinstance(FlatIndex(np.zeros((2, 3), np.float32)), Backend)
    assert deeprank.FlatIndex is FlatIndex


def test_search_matches_reference_after_many_small_adds(rng):
    q, x = random_case(rng, 8, 300, 16)
    index = FlatIndex(x[:100])
    assert len(index) == 100 and index.dim == 16
    for start in range(100, 250, 37):
        index.add(x[start : min(start + 37, 250)])
    for row in range(250, 300):
        index.add(x[row : row + 1])
    assert len(index) == 300
    np.testing.assert_array_equal(index.vectors, x)
    np.testing.assert_array_equal(index.keys, np.arange(300))
    np.testing.assert_allclose(index.norms, (x.astype(np.float64) ** 2).sum(1), rtol=1e-5)
    for k in (1, 6, 300):
        assert_exact(index, q, x, np.arange(300), k)
    tdist, tkeys = index.search(torch.from_numpy(q), 6, threads=1)  # torch in, torch out
    np.testing.assert_array_equal(tkeys.numpy(), index.search(q, 6)[1])
    with pytest.raises(ValueError, match="D=16"):
        index.add(np.zeros((2, 5), np.float32))


def test_growth_is_geometric(rng):
    index = FlatIndex(np.empty((0, 4), np.float32))
    moves, last = 0, None
    for _ in range(1000):
        index.add(rng.standard_normal((1, 4)).astype(np.float32))
        view = index.vectors
        if last is not None and not np.shares_memory(view[:1], last[:1]):
            moves += 1
        last = view
    assert len(index) == 1000
    assert moves <= 8  # 16, 32, ..., 1024: log2(1000 / 16) + 1 moves, not one per add


def test_norms_follow_adds_after_the_first_search(rng):
    q, x = random_case(rng, 3, 60, 5)
    index = FlatIndex(x[:20])
    index.search(q, 2)  # norms computed now
    index.add(x[20:])
    np.testing.assert_allclose(index.norms, (x.astype(np.float64) ** 2).sum(1), rtol=1e-5)
    assert_exact(index, q, x, np.arange(60), 7)


def test_custom_keys_and_key_errors(rng):
    q, x = random_case(rng, 5, 50, 6)
    keys = rng.permutation(50) * 3 + 7  # not ascending, not row positions
    index = FlatIndex(x, keys)
    np.testing.assert_array_equal(index.keys, keys)
    assert_exact(index, q, x, keys, 9)
    extra = rng.standard_normal((2, 6)).astype(np.float32)
    index.add(extra)  # default keys continue after the largest
    np.testing.assert_array_equal(index.keys[-2:], [keys.max() + 1, keys.max() + 2])
    index.add(extra[:1], keys=[1])
    for bad, error, message in [
        ([keys[0]], ValueError, "already in the index"),
        ([5, 5], ValueError, "unique"),
        ([-1], ValueError, "non-negative"),
        ([1.5], TypeError, "integers"),
    ]:
        with pytest.raises(error, match=message):
            index.add(np.zeros((len(bad), 6), np.float32), keys=bad)
    assert len(index) == 53  # failed adds changed nothing
    with pytest.raises(ValueError, match="unique"):
        FlatIndex(x[:2], keys=[4, 4])
    with pytest.raises(ValueError, match="2 keys for 3"):
        FlatIndex(x[:3], keys=[0, 1])


@pytest.mark.parametrize("owned", [True, False])
def test_remove_keeps_order_and_matches_reference(rng, monkeypatch, owned):
    monkeypatch.setattr(flat, "_COMPACT_BLOCK_BYTES", 5 * 4 * 7)  # 7-row blocks: many of them
    q, x = random_case(rng, 6, 80, 5)
    keys = np.arange(80) * 2
    index = FlatIndex(x, keys, copy=owned)
    index.search(q, 1)  # norms cached: they must be closed up too
    gone = rng.choice(80, size=23, replace=False)
    assert index.remove(np.concatenate([keys[gone], keys[gone[:3]]])) == 23  # repeats count once
    kept = np.setdiff1d(np.arange(80), gone)
    np.testing.assert_array_equal(index.vectors, x[kept])
    np.testing.assert_array_equal(index.keys, keys[kept])
    np.testing.assert_allclose(index.norms, (x[kept].astype(np.float64) ** 2).sum(1), rtol=1e-5)
    for k in (1, 4, len(kept)):
        assert_exact(index, q, x[kept], keys[kept], k)
    with pytest.raises(KeyError, match="999"):
        index.remove([keys[kept[0]], 999])
    assert len(index) == len(kept)  # nothing removed by the failed call
    index.add(x[gone[:2]], keys=keys[gone[:2]])  # removed keys may come back
    assert_exact(
        index, q, np.concatenate([x[kept], x[gone[:2]]]), np.concatenate([keys[kept], keys[gone[:2]]]), 3
    )
    assert index.remove([]) == 0


def test_remove_everything_then_start_again(rng):
    x = rng.standard_normal((5, 3)).astype(np.float32)
    index = FlatIndex(x)
    assert index.remove(np.arange(5)) == 5 and len(index) == 0
    with pytest.raises(ValueError, match=r"number of vectors in the index \(0\)"):
        index.search(x[:1], 1)
    index.add(x[:2])
    np.testing.assert_array_equal(index.keys, [0, 1])


def test_ties_go_to_the_earlier_row(rng):
    base = rng.standard_normal((10, 7)).astype(np.float32)
    rows = rng.integers(0, 10, size=60)
    x = base[rows]
    keys = rng.permutation(60) + 100  # ties are by row (insertion order), not by key
    index = FlatIndex(x, keys)
    for k in (1, 60):
        dist, got = index.search(base[:3], k)
        for r in range(3):
            same = np.flatnonzero(rows == r)  # exact copies of the query, at distance 0
            n0 = min(k, same.size)
            np.testing.assert_array_equal(got[r, :n0], keys[same][:n0])
            assert np.all(dist[r, :n0] == 0)
        _, want_rows = topk_reference(base[:3], x, k)
        np.testing.assert_array_equal(got, keys[want_rows])  # stable reference: ties by row as well


def test_nan_rows_sort_last(rng):
    x = rng.standard_normal((6, 3)).astype(np.float32)
    x[2, 1] = np.nan
    dist, got = FlatIndex(x).search(x[:1], 6)
    assert got[0, -1] == 2 and np.isnan(dist[0, -1]) and np.isfinite(dist[0, :-1]).all()


def test_k_is_checked(rng):
    index = FlatIndex(rng.standard_normal((4, 2)).astype(np.float32))
    for k in (0, 5):
        with pytest.raises(ValueError, match=r"between 1 and the number of vectors in the index \(4\)"):
            index.search(np.zeros((1, 2), np.float32), k)
    with pytest.raises(TypeError, match="k must be an int"):
        index.search(np.zeros((1, 2), np.float32), True)


def test_copy_policy(rng):
    x = rng.standard_normal((20, 4)).astype(np.float32)
    owned = FlatIndex(x)
    borrowed = FlatIndex(x, copy=False)
    assert not np.shares_memory(owned.vectors, x)
    assert np.shares_memory(borrowed.vectors, x)
    assert not borrowed.vectors.flags.writeable
    before = x.copy()
    grown = FlatIndex(x, copy=False)
    grown.add(np.ones((1, 4), np.float32))  # add and remove move into the index's own storage
    borrowed.remove([0])
    assert not np.shares_memory(grown.vectors, x) and len(grown) == 21
    assert not np.shares_memory(borrowed.vectors, x) and len(borrowed) == 19
    np.testing.assert_array_equal(x, before)  # x is untouched
    from_torch = FlatIndex(torch.from_numpy(x))
    assert not np.shares_memory(from_torch.vectors, x)
    converted = FlatIndex(x.astype(np.float64), copy=False)  # float64 is converted: a copy it owns
    converted.remove([1])
    np.testing.assert_array_equal(x, before)


def test_empty_start(rng):
    index = FlatIndex(np.empty((0, 3), np.float32))
    assert len(index) == 0
    with pytest.raises(ValueError, match=r"number of vectors in the index \(0\)"):
        index.search(np.zeros((1, 3), np.float32), 1)
    index.add(np.eye(3, dtype=np.float32))
    dist, got = index.search(np.eye(3, dtype=np.float32), 1)
    np.testing.assert_array_equal(got[:, 0], [0, 1, 2])
    assert np.all(dist == 0)


def test_memory_mapped_rows_are_searched_in_place_and_never_written(tmp_path, rng):
    q, x = random_case(rng, 4, 40, 8)
    np.save(tmp_path / "x.npy", x)
    digest = sha256_file(tmp_path / "x.npy")
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    index = FlatIndex(mm, copy=False)
    assert isinstance(index.vectors, np.memmap) and np.shares_memory(index.vectors, mm)
    assert_exact(index, q, x, np.arange(40), 5)
    assert np.shares_memory(index.vectors, mm)  # searching (and caching norms) copied nothing
    index.add(x[:2])  # the first add moves the rows into memory the index owns
    assert not np.shares_memory(index.vectors, mm) and len(index) == 42
    index.remove([0, 1])
    assert sha256_file(tmp_path / "x.npy") == digest
    np.testing.assert_array_equal(mm, x)


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path, rng, mmap):
    q, x = random_case(rng, 3, 30, 4)
    index = FlatIndex(x)
    (tmp_path / "a").mkdir()
    assert index.save(tmp_path / "a") == ["embeddings.npy"]  # keys 0 .. n-1 need no file
    loaded = FlatIndex.load(tmp_path / "a", mmap=mmap)
    assert isinstance(loaded.vectors, np.memmap) == mmap
    np.testing.assert_array_equal(loaded.vectors, x)
    np.testing.assert_array_equal(loaded.keys, np.arange(30))
    index.remove([3, 4])  # keys no longer row positions: they are saved too
    (tmp_path / "b").mkdir()
    assert index.save(tmp_path / "b") == ["embeddings.npy", "keys.npy"]
    loaded = FlatIndex.load(tmp_path / "b", mmap=mmap)
    np.testing.assert_array_equal(loaded.keys, index.keys)
    np.testing.assert_array_equal(loaded.search(q, 5)[1], index.search(q, 5)[1])
    loaded.add(x[:1])  # a loaded index grows like any other
    assert len(loaded) == 29


def test_load_rejects_wrong_files(tmp_path):
    np.save(tmp_path / "embeddings.npy", np.zeros((3, 2)))  # float64
    with pytest.raises(IndexFormatError, match="float64"):
        FlatIndex.load(tmp_path)
    (tmp_path / "embeddings.npy").write_bytes(b"garbage")
    with pytest.raises(IndexFormatError, match="not a readable .npy"):
        FlatIndex.load(tmp_path)
    np.save(tmp_path / "embeddings.npy", np.zeros((3, 2), np.float32))
    np.save(tmp_path / "keys.npy", np.arange(2))
    with pytest.raises(IndexFormatError, match="2,"):
        FlatIndex.load(tmp_path)
    np.save(tmp_path / "keys.npy", np.array([1, 1, 2]))
    with pytest.raises(IndexFormatError, match="unique"):
        FlatIndex.load(tmp_path)
