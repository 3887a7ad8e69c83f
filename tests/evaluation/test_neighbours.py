"""The blocked neighbour search against a brute-force float64 search, with and without self-exclusion."""

import numpy as np
import pytest

from deeprank.evaluation import neighbours
from deeprank.evaluation.neighbours import neighbour_blocks


def brute_force(queries, database, k, exclude_self):
    """Loop-per-query float64 search; equal distances by smaller index (stable sort), distances
    compared as topk reports them, rounded once to float32."""
    idx, dist = [], []
    for i, q in enumerate(queries.astype(np.float64)):
        d = ((database.astype(np.float64) - q) ** 2).sum(axis=1)
        order = np.argsort(d.astype(np.float32), kind="stable")
        if exclude_self:
            order = order[order != i]
        idx.append(order[:k])
        dist.append(d[order[:k]])
    return np.array(idx).reshape(len(queries), k), np.array(dist).reshape(len(queries), k)


def tie_heavy(rng, n, d=3):
    # Small integers: distances are exact in float32 and most of them tie (many duplicate points too).
    return rng.integers(0, 3, size=(n, d)).astype(np.float32)


def collect(blocks):
    blocks = list(blocks)
    rows = np.concatenate([b.rows for b in blocks])
    return (
        blocks,
        rows,
        np.concatenate([b.indices for b in blocks]),
        np.concatenate([b.distances for b in blocks]),
    )


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("data", ["ties", "normal"])
def test_blocks_equal_brute_force_over_many_chunks(rng, monkeypatch, exclude_self, data):
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 40)
    n = 61
    database = tie_heavy(rng, n) if data == "ties" else rng.normal(size=(n, 4)).astype(np.float32)
    queries = (
        database if exclude_self else (tie_heavy(rng, 23) if data == "ties" else rng.normal(size=(23, 4)))
    )
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    top = n - 1 if exclude_self else n
    for k in sorted({1, 2, 7, top}):
        blocks, rows, idx, dist = collect(neighbour_blocks(queries, database, k, exclude_self=exclude_self))
        assert len(blocks) == -(-len(queries) // max(1, 40 // ((k + 1) if exclude_self else k)))
        assert rows.tolist() == list(range(len(queries)))
        want_idx, want_dist = brute_force(queries, database, k, exclude_self)
        np.testing.assert_array_equal(idx, want_idx, err_msg=f"k={k}")
        np.testing.assert_allclose(dist, want_dist, rtol=1e-6, atol=1e-6)


def test_rows_subset_and_prefix_of_a_wider_search(rng, monkeypatch):
    # The shared search rests on this: the first j columns of a k-search are the j-search.
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 64)
    e = tie_heavy(rng, 80)
    rows = np.sort(rng.choice(80, size=31, replace=False))
    _, got_rows, wide, _ = collect(neighbour_blocks(e, e, 40, exclude_self=True, rows=rows))
    assert got_rows.tolist() == rows.tolist()
    want, _ = brute_force(e, e, 40, exclude_self=True)
    np.testing.assert_array_equal(wide, want[rows])
    for j in (1, 5, 39):
        _, _, narrow, _ = collect(neighbour_blocks(e, e, j, exclude_self=True, rows=rows))
        np.testing.assert_array_equal(narrow, wide[:, :j])


def test_self_is_dropped_even_behind_duplicates():
    # Item 5 has five identical points of smaller index: it is not among its own 2 + 1 nearest.
    e = np.zeros((8, 2), np.float32)
    e[6:] = 1
    (block,) = neighbour_blocks(e, e, 2, exclude_self=True)
    assert block.indices[5].tolist() == [0, 1] and block.indices[0].tolist() == [1, 2]
    assert not (block.indices == np.arange(8)[:, None]).any()


def test_bad_arguments():
    e = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"between 1 and the number of other database rows \(3\), got 4"):
        next(neighbour_blocks(e, e, 4, exclude_self=True))
    with pytest.raises(ValueError, match="query set to be the database"):
        next(neighbour_blocks(e[:2], e, 1, exclude_self=True))
    with pytest.raises(ValueError, match="got 0"):
        next(neighbour_blocks(e, e, 0))
    assert list(neighbour_blocks(e, e, 4, rows=np.array([], np.int64))) == []
