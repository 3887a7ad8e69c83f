"""deeprank.topk against the float64 reference on the CPU (every SIMD variant) and CUDA, plus bad input.

Kernel tests take ``device_isa`` or ``device`` (tests/ops/conftest.py): the same checks run on every
CPU SIMD variant and on the GPU. CUDA-only behaviour (the GPU plan's splits, streams,
``__cuda_array_interface__``, mixed devices) is in the tests marked ``cuda``; CPU-only behaviour (the
numpy/torch input policy, database norms, threads, the binding boundary) in unmarked tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deeprank
from deeprank import _C
from deeprank._build import cuda_module
from deeprank.ops import cuda as cuda_ops
from deeprank.ops.reference import topk_reference


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
        # Ties (equal finite float32 distances) come in index order; distances reported as inf are
        # ranked by their float64 value instead (overflow), which the reference comparison above checks.
        same = (dist[r][1:] == dist[r][:-1]) & np.isfinite(dist[r][1:])
        assert np.all(idx[r][1:][same] > idx[r][:-1][same]), f"tie order, row {r}"


def random_case(rng, m, n, d, scale=1.0):
    q = (rng.standard_normal((m, d)) * scale).astype(np.float32)
    x = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    return q, x


def search(device: str, q: np.ndarray, x: np.ndarray, k: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """deeprank.topk on ``device``: numpy in and out on the CPU; CUDA tensors in on the GPU."""
    if device == "cpu":
        return deeprank.topk(q, x, k, **kwargs)
    dist, idx = deeprank.topk(torch.from_numpy(q).to(device), torch.from_numpy(x).to(device), k, **kwargs)
    assert dist.device.type == idx.device.type == device
    return dist.cpu().numpy(), idx.cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# The sample set: (M, N, D, K) with D in {1, 3, 17, 128, 1000}, k = 1 and k = N, and M across the
# query-block steps of the CPU kernels (row kernel up to 4 queries, lanes of 8 or 16, blocks of up to
# 512) and of the GPU's (8 to 64 queries per block).
SAMPLES = [
    (1, 1, 1, 1),
    (2, 2, 3, 2),
    (5, 37, 17, 1),
    (5, 37, 17, 37),
    (8, 300, 128, 10),
    (9, 300, 128, 300),
    (17, 301, 3, 100),
    (33, 1000, 1000, 50),
    (64, 700, 128, 1),
    (70, 2000, 17, 64),
    (130, 4000, 128, 100),
]


def sample_inputs(device: str, rng, samples=SAMPLES) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """``(queries, database, k)`` for each ``(M, N, D, K)`` in ``samples``: float32 tensors on ``device``."""
    out = []
    for m, n, d, k in samples:
        q, x = random_case(rng, m, n, d)
        out.append((torch.from_numpy(q).to(device), torch.from_numpy(x).to(device), k))
    return out


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: "M{}-N{}-D{}-K{}".format(*s))
def test_samples_match_reference(device, rng, sample):
    ((q, x, k),) = sample_inputs(device, rng, [sample])
    dist, idx = deeprank.topk(q, x, k)
    assert dist.device == idx.device == q.device
    assert_matches_reference(q.cpu().numpy(), x.cpu().numpy(), k, dist.cpu(), idx.cpu())


@pytest.mark.parametrize("d", [1, 3, 17, 128, 1000])
@pytest.mark.parametrize("n", [1, 2, 37, 300])
def test_matches_reference_shapes(device_isa, rng, d, n):
    for m in (1, 4, 5, 33):
        q, x = random_case(rng, m, n, d)
        for k in sorted({1, n, max(1, n // 3)}):
            dist, idx = search(device_isa, q, x, k)
            assert_matches_reference(q, x, k, dist, idx)
            if device_isa == "cpu":
                tdist, tidx = deeprank.topk(
                    torch.from_numpy(q), torch.from_numpy(x), k
                )  # torch in, torch out
                np.testing.assert_array_equal(tdist.numpy(), dist)
                np.testing.assert_array_equal(tidx.numpy(), idx)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 33, 70])
def test_matches_reference_many_blocks(device_isa, rng, m):
    # Several database tiles and splits, odd tails of rows and of query lanes.
    q, x = random_case(rng, m, 4099, 20)
    for k in (1, 10, 257):
        dist, idx = search(device_isa, q, x, k, threads=3)
        assert_matches_reference(q, x, k, dist, idx)


def test_large_k_many_rows(device, rng):
    q, x = random_case(rng, 9, 20000, 8)
    dist, idx = search(device, q, x, 1000)
    assert_matches_reference(q, x, 1000, dist, idx)


@pytest.mark.parametrize("m", [1, 40])
def test_duplicate_rows_tie_by_index(device_isa, rng, m):
    base = rng.standard_normal((50, 17)).astype(np.float32)
    x = base[rng.integers(0, 50, size=400)]  # each row repeated ~8 times at random positions
    q = np.concatenate([x[:3], rng.standard_normal((m, 17)).astype(np.float32)])
    for k in (1, 7, 64, 400):
        dist, idx = search(device_isa, q, x, k)
        assert_matches_reference(q, x, k, dist, idx)
        # Exact duplicates of the query give distance exactly 0, in index order.
        zero = np.flatnonzero((x == x[0]).all(axis=1))
        if k >= len(zero):
            np.testing.assert_array_equal(idx[0, : len(zero)], zero)
            assert np.all(dist[0, : len(zero)] == 0)


def test_massive_exact_ties(device_isa, rng):
    # Small-integer data: every distance is an exact integer, so most rows tie with many others.
    x = rng.integers(0, 2, size=(3000, 9)).astype(np.float32)
    q = rng.integers(0, 2, size=(37, 9)).astype(np.float32)
    for k in (1, 5, 100, 1000):
        dist, idx = search(device_isa, q, x, k)
        assert_matches_reference(q, x, k, dist, idx)


def test_tiled_rows_equal_the_reference_exactly(device_isa, rng):
    # Integer data: every distance is exact, and each row appears 25 times.
    base = rng.integers(-3, 4, size=(8, 5)).astype(np.float32)
    x = np.tile(base, (25, 1))
    q = rng.integers(-3, 4, size=(6, 5)).astype(np.float32)
    for k in (1, 7, 60, 200):
        dist, idx = search(device_isa, q, x, k)
        ref_d, ref_i = topk_reference(q, x, k)
        np.testing.assert_array_equal(idx, ref_i)
        np.testing.assert_array_equal(dist, ref_d.astype(np.float32))


def test_large_offset_values(device_isa, rng):
    # Norms dominate the distances: the float32 expansion loses digits, the exact pass restores them.
    q, x = random_case(rng, 20, 500, 64)
    q += 1000.0
    x += 1000.0
    dist, idx = search(device_isa, q, x, 10)
    assert_matches_reference(q, x, 10, dist, idx)


def _rounding_adversary(d: int, m: int, near: int, far: int, seed: int):
    """Queries and rows whose float32 f = ||x||^2 - 2 q.x errs by about half of topk's window.

    q = (V, t, ..., t); "near" rows (V, a, ..., a), "far" rows (V, b, ..., b), with V^2 = 2^20 (float32
    spacing U = 2^-3 there) and t a = 63/128 U, t b = 65/128 U, all exact. Summed from the V^2 term
    on, q.x rounds down by 63/128 U at each of the d - 1 steps for a near row and up by as much for a
    far one, so the float32 f of near rows exceeds that of far rows by about 1.9 (d - 1) U although
    near rows are closer (distances 0.1348 (d - 1) against 0.1465 (d - 1), exact in float32).
    Returns (queries, database, indices of the near rows).
    """
    v, u = 2.0**10, 2.0**-3
    t, a, b = 2.0**-3, 63 / 128 * u / 2.0**-3, 65 / 128 * u / 2.0**-3
    q = np.full((m, d), t, np.float32)
    q[:, 0] = v
    x = np.full((near + far, d), b, np.float32)
    x[:near] = a
    x[:, 0] = v
    order = np.random.default_rng(seed).permutation(near + far)
    return q, x[order], np.flatnonzero(order < near)


@pytest.mark.parametrize("m", [1, 8])
@pytest.mark.parametrize("d", [17, 128, 1000])
def test_near_ties_at_the_error_bound(device_isa, d, m):
    """Near rows look farther than 1200 decoys by about 47% of the candidate window (the float32 error
    bound derived at candidate_slack in csrc/topk/topk.cpp), so the search is right only if that window
    really covers float32 error. Checked by scaling the window: at 0.45 the packed-lanes kernel (m = 8,
    d >= 128) fails here; the row kernel (m = 1), whose lane-split sums round less, from 0.1 down."""
    q, x, near = _rounding_adversary(d, m, near=300, far=1200, seed=d + m)
    f32 = np.float32
    for row in (near[0], np.setdiff1d(np.arange(len(x)), near)[0]):
        # The premise: an emulated float32 FMA chain rounds q.x as described.
        s = f32(q[0, 0] * x[row, 0])
        for c in range(1, d):
            s = f32(np.float64(s) + np.float64(q[0, c]) * np.float64(x[row, c]))
        exact = np.dot(q[0].astype(np.float64), x[row].astype(np.float64))
        assert abs(float(s) - exact) > 0.45 * (d - 1) * 2.0**-3
    for k in (1, 50, 300):
        dist, idx = search(device_isa, q, x, k)
        ref_d, ref_i = topk_reference(q, x, k)
        np.testing.assert_array_equal(idx, ref_i)
        np.testing.assert_array_equal(dist, ref_d.astype(np.float32))
        assert np.isin(idx, near).all()


@pytest.mark.parametrize("m", [1, 9])
def test_nan_database_rows_sort_last(device_isa, rng, m):
    q, x = random_case(rng, m, 60, 19)
    nan_rows = [3, 17, 59]
    for r in nan_rows:
        x[r, r % 19] = np.nan
    for k in (1, 10, 57, 58, 60):
        dist, idx = search(device_isa, q, x, k)
        assert_matches_reference(q, x, k, dist, idx)
    dist, idx = search(device_isa, q, x, 60)
    np.testing.assert_array_equal(idx[:, -3:], np.tile(nan_rows, (m, 1)))
    assert np.isnan(dist[:, -3:]).all() and not np.isnan(dist[:, :-3]).any()


@pytest.mark.parametrize("m", [3, 12])
def test_nan_queries_get_nan_and_index_order(device_isa, rng, m):
    q, x = random_case(rng, m, 80, 16)
    q[1, 5] = np.nan
    dist, idx = search(device_isa, q, x, 7)
    assert np.isnan(dist[1]).all()
    np.testing.assert_array_equal(idx[1], np.arange(7))
    assert_matches_reference(q, x, 7, dist, idx)


def test_nan_query_and_nan_rows_with_k_equal_n(device_isa, rng):
    n, d, k = 50, 7, 50
    q, x = random_case(rng, 4, n, d)
    q[1, 3] = np.nan
    x[[2, 30], 0] = np.nan
    dist, idx = search(device_isa, q, x, k)
    assert np.isnan(dist[1]).all()
    np.testing.assert_array_equal(idx[1], np.arange(k))
    for row in (0, 2, 3):
        assert np.isfinite(dist[row, : n - 2]).all()
        assert np.isnan(dist[row, n - 2 :]).all()
        np.testing.assert_array_equal(idx[row, n - 2 :], [2, 30])  # NaN rows last, by index
    ref_d, ref_i = topk_reference(q, x, k)
    np.testing.assert_array_equal(idx, ref_i)


def test_inf_and_huge_values(device_isa, rng):
    q, x = random_case(rng, 6, 50, 8)
    x[4, 2] = np.inf
    x[9] = 1e19  # squared norm overflows float32
    x[11, 0] = np.nan
    q[2, 1] = -np.inf
    q[3] = 3e18
    for k in (1, 5, 48, 50):
        dist, idx = search(device_isa, q, x, k)
        assert_matches_reference(q, x, k, dist, idx)
    dist, idx = search(device_isa, q, x, 50)
    assert idx[0, -1] == 11 and np.isnan(dist[0, -1])  # NaN after inf
    assert np.isinf(dist[0, -3:-1]).all()


def test_distances_that_overflow_float32_keep_their_float64_order(isa, rng):
    # Every distance here is above float32's largest value: reported as inf, but ranked by float64
    # (before, they all tied at inf and came back in index order: a silently wrong ranking).
    n = 40
    scale = rng.permutation(n).astype(np.float64) + 1.0
    x = (np.ones((n, 4)) * scale[:, None] * 1e19).astype(np.float32)
    q = np.zeros((3, 4), np.float32)
    q[1] = 5e18  # also a huge query (the brute-force path)
    for k in (1, 7, n):
        dist, idx = deeprank.topk(q, x, k)
        assert np.isinf(dist[[0, 2]]).all()
        ref_d, ref_i = topk_reference(q, x, k)
        np.testing.assert_array_equal(idx, ref_i)
        np.testing.assert_array_equal(idx[0], np.argsort(scale, kind="stable")[:k])


def test_empty_queries(device, rng):
    _, x = random_case(rng, 1, 10, 4)
    dist, idx = search(device, np.empty((0, 4), np.float32), x, 3)
    assert dist.shape == (0, 3) and idx.shape == (0, 3)
    assert dist.dtype == np.float32 and idx.dtype == np.int64
    td, ti = deeprank.topk(torch.empty(0, 4, device=device), torch.from_numpy(x).to(device), 3)
    assert isinstance(td, torch.Tensor) and td.shape == (0, 3) and ti.dtype == torch.int64


# ---------------------------------------------------------------------------------------------------
# CUDA only


@pytest.mark.cuda
def test_cuda_matches_cpu(rng):
    for q, x, k in sample_inputs("cuda", rng):
        dist, idx = deeprank.topk(q, x, k)
        cpu_d, cpu_i = deeprank.topk(q.cpu(), x.cpu(), k)
        np.testing.assert_array_equal(idx.cpu().numpy(), cpu_i.numpy())
        np.testing.assert_allclose(dist.cpu().numpy(), cpu_d.numpy(), rtol=1e-6, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("m", "n", "d", "k"), [(1, 200_000, 128, 100), (3, 5000, 64, 1024), (2, 3000, 16, 2048)]
)
def test_cuda_many_splits_and_large_k(rng, m, n, d, k):
    q, x = random_case(rng, m, n, d)
    plan = cuda_module().topk_plan(m, n, d, k, torch.cuda.current_device())
    if m == 1:
        assert plan["splits"] > 1  # M = 1 spreads the database over the GPU
    dist, idx = search("cuda", q, x, k)
    assert_matches_reference(q, x, k, dist, idx)


@pytest.mark.cuda
def test_cuda_bad_input_raises(rng):
    x = torch.from_numpy(random_case(rng, 1, 10, 4)[1]).cuda()
    for bad in (0, 11):
        with pytest.raises(ValueError, match=r"k must be between 1 and .*\(10\)"):
            cuda_ops.topk(x, x, bad)
    with pytest.raises(ValueError, match="dimension"):
        cuda_ops.topk(torch.zeros(2, 5, device="cuda"), x, 3)
    with pytest.raises(TypeError, match="float32"):
        cuda_ops.topk(x.double(), x.double(), 3)


class CudaArray:
    """A minimal foreign GPU array: only ``__cuda_array_interface__`` (what CuPy or Numba expose)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor = tensor  # keeps the memory alive

    @property
    def __cuda_array_interface__(self) -> dict:
        return self._tensor.__cuda_array_interface__


@pytest.mark.cuda
def test_cuda_public_api_and_cuda_array_interface(rng):
    q, x = random_case(rng, 12, 500, 33)
    cpu_d, cpu_i = deeprank.topk(q, x, 20)
    for wrap in (lambda t: t, CudaArray):
        dist, idx = deeprank.topk(wrap(torch.from_numpy(q).cuda()), wrap(torch.from_numpy(x).cuda()), 20)
        dist, idx = (torch.as_tensor(t, device="cuda").cpu().numpy() for t in (dist, idx))
        np.testing.assert_array_equal(idx, cpu_i)
        np.testing.assert_allclose(dist, cpu_d, rtol=1e-6, atol=0)


@pytest.mark.cuda
def test_cuda_mixed_devices_raise(rng):
    q, x = random_case(rng, 3, 20, 8)
    with pytest.raises((ValueError, TypeError), match="(?i)device|cuda"):
        deeprank.topk(torch.from_numpy(q).cuda(), x, 5)
    with pytest.raises((ValueError, TypeError), match="(?i)device|cuda"):
        deeprank.topk(q, torch.from_numpy(x).cuda(), 5)
    with pytest.raises(ValueError, match="device"):
        cuda_ops.topk(torch.from_numpy(q).cuda(), torch.from_numpy(x), 5)


@pytest.mark.cuda
def test_cuda_runs_on_the_current_stream(rng):
    q, x = random_case(rng, 40, 3000, 64)
    ref_d, ref_i = cuda_ops.topk(torch.from_numpy(q).cuda(), torch.from_numpy(x).cuda(), 10)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        # Inputs produced on the side stream: a kernel on any other stream could read them unwritten.
        qs = torch.from_numpy(q).cuda() * 1.0
        xs = torch.from_numpy(x).cuda() * 1.0
        dist, idx = cuda_ops.topk(qs, xs, 10)
    side.synchronize()
    assert torch.equal(idx, ref_i) and torch.equal(dist, ref_d)


# ---------------------------------------------------------------------------------------------------
# CPU only: the input policy of deeprank.topk, database norms, the binding boundary


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
    # The binding's precondition guards (memory safety), reached only by calling _C directly.
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

    monkeypatch.setattr(cuda_ops, "topk", fake_topk)
    monkeypatch.setattr(torch, "as_tensor", lambda obj, device=None: ("tensor", obj, device))
    a, b = FakeCuda(), FakeCuda()
    assert deeprank.topk(a, b, 2) == ("d", "i")
    assert seen["queries"] == ("tensor", a, "cuda") and seen["k"] == 2 and seen["norms"] is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cuda_ops.topk(torch.zeros(2, 3), torch.zeros(4, 3), 2), "queries must be on a CUDA device"),
        (lambda: cuda_ops.topk("q", torch.zeros(4, 3), 2), "queries must be a torch CUDA tensor"),
    ],
)
def test_cuda_entry_point_rejects_cpu_tensors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


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
