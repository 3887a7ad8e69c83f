"""deeprank.topk against the float64 reference, on every SIMD variant, plus bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deeprank
from deeprank import _C
from deeprank.ops.reference import topk_reference


@pytest.fixture(params=_C.available_isas())
def isa(request):
    """Runs the test once per SIMD variant this CPU supports."""
    _C.set_isa(request.param)
    try:
        yield request.param
    finally:
        _C.set_isa("auto")


def assert_matches_reference(q: np.ndarray, x: np.ndarray, k: int, dist, idx) -> None:
    """Checks a top-k result against the float64 reference.

    Distances must equal the reference rounded to float32 (up to a few ulps); every returned index must
    really be at the reported rank (its float64 distance equals the reference's at that position);
    indices must equal the reference wherever the reference distance is not within float32 error of a
    different distance; equal returned distances must be in index order.
    """
    dist = np.asarray(dist)
    idx = np.asarray(idx)
    m = q.shape[0]
    assert dist.shape == (m, k) and idx.shape == (m, k)
    assert dist.dtype == np.float32 and idx.dtype == np.int64
    kk = min(k + 1, x.shape[0])
    ref_d, ref_i = topk_reference(q, x, kk)
    with np.errstate(over="ignore"):
        ref_d = ref_d.astype(np.float32).astype(np.float64)  # what float32 results can hold
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    for r in range(m):
        rd = ref_d[r]
        finite = rd[np.isfinite(rd)]
        tol = 4e-7 * np.max(np.abs(finite), initial=0.0) + 1e-30
        nan = np.isnan(rd[:k])
        np.testing.assert_array_equal(np.isnan(dist[r]), nan, err_msg=f"NaN pattern, row {r}")
        np.testing.assert_allclose(dist[r][~nan], rd[:k][~nan], rtol=3e-7, atol=tol, err_msg=f"row {r}")
        assert np.all(dist[r][~nan] >= 0)
        assert len(set(idx[r].tolist())) == k, f"duplicate indices in row {r}"
        assert np.all((idx[r] >= 0) & (idx[r] < x.shape[0]))
        # The returned rows really are at these distances (checks near-tie choices).
        with np.errstate(over="ignore", invalid="ignore"):
            mine = ((q64[r] - x64[idx[r]]) ** 2).sum(axis=1).astype(np.float32)
        np.testing.assert_allclose(mine[~nan], rd[:k][~nan], rtol=3e-7, atol=tol, err_msg=f"row {r}")
        # Where a reference distance is separated from its neighbours (rd is sorted, NaN last) by more
        # than float32 error, indices must match; within groups of (near-)equal distances the order is
        # by index (checked below) and each chosen row's distance was checked above.
        with np.errstate(invalid="ignore"):
            gap = np.diff(rd)
        sep = ~(gap <= tol)  # NaN gaps (NaN rows) count as separated; inf - inf is NaN too
        sep &= ~(np.isinf(rd[1:]) & np.isinf(rd[:-1]))
        clear = np.ones(len(rd), dtype=bool)
        clear[1:] &= sep
        clear[:-1] &= sep
        clear |= np.isnan(rd)  # NaN rows are ordered by index in both
        clear = clear[:k]
        np.testing.assert_array_equal(idx[r][clear], ref_i[r][:k][clear], err_msg=f"row {r}")
        # Ties (equal float32 distances) come in index order.
        same = dist[r][1:] == dist[r][:-1]
        assert np.all(idx[r][1:][same] > idx[r][:-1][same]), f"tie order, row {r}"


def random_case(rng, m, n, d, scale=1.0):
    q = (rng.standard_normal((m, d)) * scale).astype(np.float32)
    x = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    return q, x


@pytest.mark.parametrize("d", [1, 3, 17, 128, 1000])
@pytest.mark.parametrize("n", [1, 2, 37, 300])
def test_matches_reference_shapes(isa, rng, d, n):
    for m in (1, 4, 5, 33):
        q, x = random_case(rng, m, n, d)
        for k in sorted({1, n, max(1, n // 3)}):
            dist, idx = deeprank.topk(q, x, k)
            assert_matches_reference(q, x, k, dist, idx)
            tdist, tidx = deeprank.topk(torch.from_numpy(q), torch.from_numpy(x), k)  # torch in, torch out
            np.testing.assert_array_equal(tdist.numpy(), dist)
            np.testing.assert_array_equal(tidx.numpy(), idx)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 33, 70])
def test_matches_reference_many_blocks(isa, rng, m):
    # Several database tiles and splits, odd tails of rows and of query lanes.
    q, x = random_case(rng, m, 4099, 20)
    for k in (1, 10, 257):
        dist, idx = deeprank.topk(q, x, k, threads=3)
        assert_matches_reference(q, x, k, dist, idx)


def test_large_k_many_rows(rng):
    q, x = random_case(rng, 9, 20000, 8)
    dist, idx = deeprank.topk(q, x, 1000)
    assert_matches_reference(q, x, 1000, dist, idx)


@pytest.mark.parametrize("m", [1, 40])
def test_duplicate_rows_tie_by_index(isa, rng, m):
    base = rng.standard_normal((50, 17)).astype(np.float32)
    x = base[rng.integers(0, 50, size=400)]  # each row repeated ~8 times at random positions
    q = np.concatenate([x[:3], rng.standard_normal((m, 17)).astype(np.float32)])
    for k in (1, 7, 64, 400):
        dist, idx = deeprank.topk(q, x, k)
        assert_matches_reference(q, x, k, dist, idx)
        # Exact duplicates of the query give distance exactly 0, in index order.
        zero = np.flatnonzero((x == x[0]).all(axis=1))
        if k >= len(zero):
            np.testing.assert_array_equal(idx[0, : len(zero)], zero)
            assert np.all(dist[0, : len(zero)] == 0)


def test_massive_exact_ties(isa, rng):
    # Small-integer data: every distance is an exact integer, so most rows tie with many others.
    x = rng.integers(0, 2, size=(3000, 9)).astype(np.float32)
    q = rng.integers(0, 2, size=(37, 9)).astype(np.float32)
    for k in (1, 5, 100, 1000):
        dist, idx = deeprank.topk(q, x, k)
        assert_matches_reference(q, x, k, dist, idx)


def test_large_offset_values(isa, rng):
    # Norms dominate the distances: the float32 expansion loses digits, the exact pass restores them.
    q, x = random_case(rng, 20, 500, 64)
    q += 1000.0
    x += 1000.0
    dist, idx = deeprank.topk(q, x, 10)
    assert_matches_reference(q, x, 10, dist, idx)


@pytest.mark.parametrize("m", [1, 9])
def test_nan_database_rows_sort_last(isa, rng, m):
    q, x = random_case(rng, m, 60, 19)
    nan_rows = [3, 17, 59]
    for r in nan_rows:
        x[r, r % 19] = np.nan
    for k in (1, 10, 57, 58, 60):
        dist, idx = deeprank.topk(q, x, k)
        assert_matches_reference(q, x, k, dist, idx)
    dist, idx = deeprank.topk(q, x, 60)
    np.testing.assert_array_equal(idx[:, -3:], np.tile(nan_rows, (m, 1)))
    assert np.isnan(dist[:, -3:]).all() and not np.isnan(dist[:, :-3]).any()


@pytest.mark.parametrize("m", [3, 12])
def test_nan_queries_get_nan_and_index_order(isa, rng, m):
    q, x = random_case(rng, m, 80, 16)
    q[1, 5] = np.nan
    dist, idx = deeprank.topk(q, x, 7)
    assert np.isnan(dist[1]).all()
    np.testing.assert_array_equal(idx[1], np.arange(7))
    assert_matches_reference(q, x, 7, dist, idx)


def test_inf_and_huge_values(isa, rng):
    q, x = random_case(rng, 6, 50, 8)
    x[4, 2] = np.inf
    x[9] = 1e19  # squared norm overflows float32
    x[11, 0] = np.nan
    q[2, 1] = -np.inf
    q[3] = 3e18
    for k in (1, 5, 48, 50):
        dist, idx = deeprank.topk(q, x, k)
        assert_matches_reference(q, x, k, dist, idx)
    dist, idx = deeprank.topk(q, x, 50)
    assert idx[0, -1] == 11 and np.isnan(dist[0, -1])  # NaN after inf
    assert np.isinf(dist[0, -3:-1]).all()


def test_empty_queries(rng):
    _, x = random_case(rng, 1, 10, 4)
    dist, idx = deeprank.topk(np.empty((0, 4), np.float32), x, 3)
    assert dist.shape == (0, 3) and idx.shape == (0, 3)
    assert dist.dtype == np.float32 and idx.dtype == np.int64
    td, ti = deeprank.topk(torch.empty(0, 4), torch.from_numpy(x), 3)
    assert isinstance(td, torch.Tensor) and td.shape == (0, 3) and ti.dtype == torch.int64


def test_torch_in_torch_out(rng):
    q, x = random_case(rng, 7, 90, 12)
    ref_d, ref_i = deeprank.topk(q, x, 5)
    tq, tx = torch.from_numpy(q), torch.from_numpy(x)
    dist, idx = deeprank.topk(tq, tx, 5)
    assert isinstance(dist, torch.Tensor) and isinstance(idx, torch.Tensor)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    np.testing.assert_array_equal(dist.numpy(), ref_d)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    # Mixed kinds: the result follows the queries.
    d2, i2 = deeprank.topk(q, tx, 5)
    assert isinstance(d2, np.ndarray)
    np.testing.assert_array_equal(i2, ref_i)
    # Tensors that require grad are read without autograd.
    d3, _ = deeprank.topk(tq.clone().requires_grad_(), tx, 5)
    np.testing.assert_array_equal(d3.numpy(), ref_d)


def test_database_norms_give_same_result(rng):
    q, x = random_case(rng, 10, 200, 33)
    norms = _C.squared_norms(x)
    np.testing.assert_allclose(norms, (x.astype(np.float64) ** 2).sum(1), rtol=1e-5)
    a = deeprank.topk(q, x, 9)
    b = deeprank.topk(q, x, 9, database_norms=norms)
    c = deeprank.topk(q, x, 9, database_norms=torch.from_numpy(norms))
    for got in (b, c):
        np.testing.assert_array_equal(a[0], got[0])
        np.testing.assert_array_equal(a[1], got[1])


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtypes_are_converted(rng, dtype):
    q, x = random_case(rng, 5, 100, 10)
    q, x = q.astype(dtype), x.astype(dtype)
    expect = deeprank.topk(q.astype(np.float32), x.astype(np.float32), 4)
    got = deeprank.topk(q, x, 4)
    np.testing.assert_array_equal(got[1], expect[1])
    assert got[0].dtype == np.float32
    tgot = deeprank.topk(torch.from_numpy(q), torch.from_numpy(x), 4)
    np.testing.assert_array_equal(tgot[1].numpy(), expect[1])


def test_bfloat16_tensor_is_converted(rng):
    q, x = random_case(rng, 3, 40, 8)
    tq, tx = torch.from_numpy(q).bfloat16(), torch.from_numpy(x).bfloat16()
    expect = deeprank.topk(tq.float(), tx.float(), 4)
    got = deeprank.topk(tq, tx, 4)
    torch.testing.assert_close(got[0], expect[0])


def test_non_contiguous_inputs_are_copied(rng):
    q, x = random_case(rng, 6, 120, 24)
    q_nc = np.asfortranarray(q)
    x_nc = np.repeat(x, 2, axis=1)[:, ::2]
    assert not x_nc.flags.c_contiguous and not q_nc.flags.c_contiguous
    expect = deeprank.topk(q, x, 5)
    got = deeprank.topk(q_nc, x_nc, 5)
    np.testing.assert_array_equal(got[1], expect[1])
    tq = torch.from_numpy(q).t().contiguous().t()  # same values, column-major strides
    tx = torch.from_numpy(np.repeat(x, 2, axis=1))[:, ::2]
    assert not tq.is_contiguous() and not tx.is_contiguous()
    got = deeprank.topk(tq, tx, 5)
    np.testing.assert_array_equal(got[1].numpy(), expect[1])
    np.testing.assert_array_equal(got[0].numpy(), expect[0])


def test_lists_are_accepted(rng):
    q, x = random_case(rng, 2, 10, 3)
    got = deeprank.topk(q.tolist(), x.tolist(), 2)
    np.testing.assert_array_equal(got[1], deeprank.topk(q, x, 2)[1])


# ---------------------------------------------------------------------------------------------------
# Bad input: clear exceptions naming the argument.


def _qx():
    return np.zeros((3, 4), np.float32), np.zeros((10, 4), np.float32)


@pytest.mark.parametrize(
    ("call", "exc", "pattern"),
    [
        (lambda q, x: deeprank.topk(q[0], x, 1), ValueError, "queries must be a 2-D array, got 1-D"),
        (lambda q, x: deeprank.topk(q, x[None], 1), ValueError, "database must be a 2-D array, got 3-D"),
        (lambda q, x: deeprank.topk(q[:, :3], x, 1), ValueError, "same number of columns.*D=3.*D=4"),
        (lambda q, x: deeprank.topk(q, x, 0), ValueError, r"k must be between 1 and .*\(10\), got 0"),
        (lambda q, x: deeprank.topk(q, x, 11), ValueError, r"k must be between 1 and .*\(10\), got 11"),
        (lambda q, x: deeprank.topk(q, x, 2.0), TypeError, "k must be an int, got float"),
        (lambda q, x: deeprank.topk(q, x, True), TypeError, "k must be an int, got bool"),
        (
            lambda q, x: deeprank.topk(q.astype(np.int32), x, 1),
            TypeError,
            "queries must have dtype float32.*int32",
        ),
        (
            lambda q, x: deeprank.topk(q, x.astype(bool), 1),
            TypeError,
            "database must have dtype float32.*bool",
        ),
        (
            lambda q, x: deeprank.topk(torch.zeros(3, 4, dtype=torch.int64), x, 1),
            TypeError,
            "queries must have dtype float32.*converted.*int64",
        ),
        (
            lambda q, x: deeprank.topk(q, x, 1, database_norms=np.zeros(9, np.float32)),
            ValueError,
            "database_norms",
        ),
        (
            lambda q, x: deeprank.topk(q, x, 1, database_norms=np.zeros((10, 1), np.float32)),
            ValueError,
            "database_norms",
        ),
        (lambda q, x: deeprank.topk(q, x, 1, threads=0), ValueError, "threads must be >= 1"),
        (lambda q, x: deeprank.topk(q, x, 1, threads="2"), TypeError, "threads must be an int"),
        (lambda q, x: deeprank.topk(q, x[:0], 1), ValueError, r"k must be between 1 and .*\(0\)"),
        (lambda q, x: deeprank.topk(q[:, :0], x[:, :0], 1), ValueError, "at least one column"),
    ],
)
def test_bad_input_raises(call, exc, pattern):
    q, x = _qx()
    with pytest.raises(exc, match=pattern):
        call(q, x)


def test_binding_boundary_checks():
    q, x = _qx()
    with pytest.raises(TypeError, match="queries must be a 2-D float32 array, got 2-D float64"):
        _C.topk(q.astype(np.float64), x, 1)
    with pytest.raises(ValueError, match="database must be C-contiguous"):
        _C.topk(q, np.asfortranarray(np.zeros((10, 4), np.float32)), 1)
    with pytest.raises(ValueError, match="k must be between"):
        _C.topk(q, x, 11)
    with pytest.raises(TypeError, match="must be an array supporting the buffer protocol"):
        _C.topk([[1.0]], x, 1)


def test_cuda_dispatch_rules(monkeypatch):
    class FakeCuda:
        __cuda_array_interface__ = {"shape": (3, 4), "typestr": "<f4", "data": (0, False), "version": 3}

    q, x = _qx()
    with pytest.raises(ValueError, match="same kind of device"):
        deeprank.topk(FakeCuda(), x, 1)
    with pytest.raises(ValueError, match="same kind of device"):
        deeprank.topk(q, FakeCuda(), 1)
    seen = {}

    def fake_topk(queries, database, k, norms):
        seen.update(queries=queries, database=database, k=k, norms=norms)
        return "d", "i"

    from deeprank.ops import cuda as _cuda_ops

    monkeypatch.setattr(_cuda_ops, "topk", fake_topk)
    monkeypatch.setattr(torch, "as_tensor", lambda obj, device=None: ("tensor", obj, device))
    a, b = FakeCuda(), FakeCuda()
    assert deeprank.topk(a, b, 2) == ("d", "i")
    assert seen["queries"] == ("tensor", a, "cuda") and seen["k"] == 2 and seen["norms"] is None


def test_workspace_bound_is_small():
    # 1024 queries against 1M x 128 (a 512 MB database): the workspace stays far below the database.
    for k in (10, 100, 1000):
        ws = _C.topk_workspace_bytes(1024, 1_000_000, 128, k, threads=2)
        assert ws < 200 * 2**20, (k, ws)
    assert _C.topk_workspace_bytes(1, 1_000_000, 128, 10, threads=2, norms_given=True) < 2**20


@pytest.mark.slow
def test_memory_1024_queries_1m_rows(tmp_path):
    """Peak memory of 1024 x (1M x 128) stays within the database plus a few hundred MB."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import resource, numpy as np, deeprank
        x = np.random.default_rng(0).random((1_000_000, 128), dtype=np.float32)
        q = np.random.default_rng(1).random((1024, 128), dtype=np.float32)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        deeprank.topk(q, x, 100)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((peak - base) // 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    )
    extra_mb = int(out.stdout.strip().splitlines()[-1])
    assert extra_mb < 300, extra_mb
