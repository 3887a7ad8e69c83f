"""The CUDA kernels (deeprank._cuda via deeprank._cuda_ops) against the CPU path and float64 references.

GPU tests are marked ``cuda`` and skip unless torch sees a GPU and deeprank._cuda imports and sees a
device. The tests at the end run everywhere: the module imports without a GPU and the entry points
reject CPU tensors with a clear error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deeprank
from deeprank._build import cuda_device_count, cuda_module
from deeprank.ops import cuda as _cuda_ops
from deeprank.ops.reference import topk_reference


def _gpu_ready() -> bool:
    return torch.cuda.is_available() and cuda_module() is not None and cuda_device_count() > 0


GPU = _gpu_ready()
gpu = pytest.mark.skipif(not GPU, reason="needs an NVIDIA GPU, torch with CUDA and deeprank._cuda")


def _cuda(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a)).to(device="cuda", dtype=dtype)


def _numpy(obj) -> np.ndarray:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if hasattr(obj, "__cuda_array_interface__"):
        return torch.as_tensor(obj, device="cuda").cpu().numpy()
    return np.asarray(obj)


class CudaArray:
    """A minimal foreign GPU array: only ``__cuda_array_interface__`` (what CuPy or Numba expose)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor = tensor  # keeps the memory alive

    @property
    def __cuda_array_interface__(self) -> dict:
        return self._tensor.__cuda_array_interface__


# ----------------------------------------------------------------------------------------------
# top-K
# ----------------------------------------------------------------------------------------------


def _exact_distances(q: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """float64 squared distances of each query to the rows it was given (idx [m, k])."""
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    return ((q64[:, None, :] - x64[idx]) ** 2).sum(axis=2)


def _check_topk(q: np.ndarray, x: np.ndarray, k: int, dist: np.ndarray, idx: np.ndarray) -> None:
    """GPU results against the float64 reference and the CPU path."""
    m = q.shape[0]
    assert dist.shape == (m, k) and idx.shape == (m, k)
    assert dist.dtype == np.float32 and idx.dtype == np.int64
    ref_d, ref_i = topk_reference(q, x, k)
    # Each returned row really is at the returned distance (float32 of the float64 sum) ...
    # (2 float32 ulps of slack: the GPU's float64 sum runs in another order than numpy's.)
    np.testing.assert_allclose(dist, _exact_distances(q, x, idx).astype(np.float32), rtol=2.4e-7, atol=0)
    # ... and the distances are the k smallest, ascending, ties by index.
    np.testing.assert_allclose(dist, ref_d, rtol=1e-6, atol=0)
    assert np.all(np.diff(dist, axis=1) >= 0)
    same = np.diff(dist, axis=1) == 0
    assert np.all(np.diff(idx, axis=1)[same] > 0)
    for row in range(m):
        assert len(set(idx[row].tolist())) == k
    # Indices agree with the reference wherever the float64 distances are not near-ties.
    gaps = np.abs(np.diff(ref_d, axis=1)) > 1e-5 * np.maximum(ref_d[:, 1:], 1e-30)
    distinct = np.ones_like(ref_i, dtype=bool)
    distinct[:, 1:] &= gaps
    distinct[:, :-1] &= gaps
    np.testing.assert_array_equal(idx[distinct], ref_i[distinct])
    # And the CPU path returns the same thing.
    cpu_d, cpu_i = deeprank.topk(q, x, k)
    np.testing.assert_array_equal(idx, np.asarray(cpu_i))
    np.testing.assert_allclose(dist, np.asarray(cpu_d), rtol=1e-6, atol=0)


TOPK_SHAPES = [
    # (m, n, d, k): D in {1, 3, 17, 128, 1000}; k = 1 and k = N; M across the queries-per-block steps
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


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize(("m", "n", "d", "k"), TOPK_SHAPES)
def test_topk_matches_reference_and_cpu(rng, m, n, d, k):
    q = rng.standard_normal((m, d)).astype(np.float32)
    x = rng.standard_normal((n, d)).astype(np.float32)
    dist, idx = _cuda_ops.topk(_cuda(q), _cuda(x), k)
    _check_topk(q, x, k, _numpy(dist), _numpy(idx))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize(
    ("m", "n", "d", "k"), [(1, 200_000, 128, 100), (3, 5000, 64, 1024), (2, 3000, 16, 2048)]
)
def test_topk_many_splits_and_large_k(rng, m, n, d, k):
    q = rng.standard_normal((m, d)).astype(np.float32)
    x = rng.standard_normal((n, d)).astype(np.float32)
    plan = cuda_module().topk_plan(m, n, d, k, torch.cuda.current_device())
    if m == 1:
        assert plan["splits"] > 1  # M = 1 spreads the database over the GPU
    dist, idx = _cuda_ops.topk(_cuda(q), _cuda(x), k)
    _check_topk(q, x, k, _numpy(dist), _numpy(idx))


@pytest.mark.cuda
@gpu
def test_topk_ties_are_ordered_by_index(rng):
    # Integer data: every distance is exact, and each row appears 25 times.
    base = rng.integers(-3, 4, size=(8, 5)).astype(np.float32)
    x = np.tile(base, (25, 1))
    q = rng.integers(-3, 4, size=(6, 5)).astype(np.float32)
    for k in (1, 7, 60, 200):
        dist, idx = _cuda_ops.topk(_cuda(q), _cuda(x), k)
        ref_d, ref_i = topk_reference(q, x, k)
        np.testing.assert_array_equal(_numpy(idx), ref_i)
        np.testing.assert_array_equal(_numpy(dist), ref_d.astype(np.float32))


@pytest.mark.cuda
@gpu
def test_topk_nan_rows(rng):
    n, d, k = 50, 7, 50
    q = rng.standard_normal((4, d)).astype(np.float32)
    x = rng.standard_normal((n, d)).astype(np.float32)
    q[1, 3] = np.nan
    x[[2, 30], 0] = np.nan
    dist, idx = (_numpy(t) for t in _cuda_ops.topk(_cuda(q), _cuda(x), k))
    assert np.isnan(dist[1]).all()
    np.testing.assert_array_equal(idx[1], np.arange(k))
    for row in (0, 2, 3):
        assert np.isfinite(dist[row, : n - 2]).all()
        assert np.isnan(dist[row, n - 2 :]).all()
        np.testing.assert_array_equal(idx[row, n - 2 :], [2, 30])  # NaN rows last, by index
    ref_d, ref_i = topk_reference(q, x, k)
    np.testing.assert_array_equal(idx, ref_i)
    cpu_d, cpu_i = deeprank.topk(q, x, k)
    np.testing.assert_array_equal(idx, np.asarray(cpu_i))


@pytest.mark.cuda
@gpu
def test_topk_empty_queries_and_bad_k(rng):
    x = _cuda(rng.standard_normal((10, 4)))
    dist, idx = _cuda_ops.topk(torch.empty((0, 4), device="cuda"), x, 3)
    assert tuple(dist.shape) == (0, 3) and tuple(idx.shape) == (0, 3)
    for bad in (0, 11):
        with pytest.raises(ValueError, match="k must be in"):
            _cuda_ops.topk(x, x, bad)
    with pytest.raises(ValueError, match="dimension"):
        _cuda_ops.topk(_cuda(rng.standard_normal((2, 5))), x, 3)
    with pytest.raises(TypeError, match="float32"):
        _cuda_ops.topk(x.double(), x.double(), 3)


@pytest.mark.cuda
@gpu
def test_topk_public_api_on_cuda_and_cuda_array_interface(rng):
    q = rng.standard_normal((12, 33)).astype(np.float32)
    x = rng.standard_normal((500, 33)).astype(np.float32)
    cpu_d, cpu_i = deeprank.topk(q, x, 20)
    for wrap in (lambda t: t, CudaArray):
        dist, idx = deeprank.topk(wrap(_cuda(q)), wrap(_cuda(x)), 20)
        np.testing.assert_array_equal(_numpy(idx), np.asarray(cpu_i))
        np.testing.assert_allclose(_numpy(dist), np.asarray(cpu_d), rtol=1e-6, atol=0)


@pytest.mark.cuda
@gpu
def test_topk_mixed_devices_raise(rng):
    q = rng.standard_normal((3, 8)).astype(np.float32)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    with pytest.raises((ValueError, TypeError), match="(?i)device|cuda"):
        deeprank.topk(_cuda(q), x, 5)
    with pytest.raises((ValueError, TypeError), match="(?i)device|cuda"):
        deeprank.topk(q, _cuda(x), 5)
    with pytest.raises(ValueError, match="device"):
        _cuda_ops.topk(_cuda(q), torch.as_tensor(x), 5)


@pytest.mark.cuda
@gpu
def test_topk_runs_on_the_current_stream(rng):
    q = rng.standard_normal((40, 64)).astype(np.float32)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    ref_d, ref_i = _cuda_ops.topk(_cuda(q), _cuda(x), 10)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        # Inputs produced on the side stream: a kernel on any other stream could read them unwritten.
        qs = _cuda(q) * 1.0
        xs = _cuda(x) * 1.0
        dist, idx = _cuda_ops.topk(qs, xs, 10)
    side.synchronize()
    assert torch.equal(idx, ref_i) and torch.equal(dist, ref_d)


# ----------------------------------------------------------------------------------------------
# Triplet loss
# ----------------------------------------------------------------------------------------------

TRIPLET_SHAPES = [(1, 1), (5, 3), (33, 17), (64, 128), (7, 1000), (3, 8192), (2, 9001), (4, 20000)]


def _triplet_reference(q, p, n, margin):
    """float64 losses and gradients (dl/dq etc. for grad = 1) on the CPU."""
    q, p, n = (t.detach().cpu().double().requires_grad_() for t in (q, p, n))
    losses = torch.clamp(margin + ((q - p) ** 2).sum(1) - ((q - n) ** 2).sum(1), min=0)
    return losses, q, p, n


class _CudaTriplet(torch.autograd.Function):
    """The CUDA kernels alone under autograd (independent of the dispatcher in deeprank._ops)."""

    @staticmethod
    def forward(ctx, q, p, n, margin):
        ctx.save_for_backward(q, p, n)
        ctx.margin = margin
        return _cuda_ops.triplet_forward(q, p, n, margin)

    @staticmethod
    def backward(ctx, grad):
        q, p, n = ctx.saved_tensors
        return (*_cuda_ops.triplet_backward(grad.contiguous(), q, p, n, ctx.margin), None)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("b", "d"), TRIPLET_SHAPES)
def test_triplet_matches_float64_reference(rng, dtype, b, d):
    q, p, n = (_cuda(rng.standard_normal((b, d)) / np.sqrt(d), dtype) for _ in range(3))
    margin = 0.3
    losses = _cuda_ops.triplet_forward(q, p, n, margin)
    ref, q64, p64, n64 = _triplet_reference(q, p, n, margin)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(losses.cpu().double(), ref.detach(), **tol)
    grad = torch.as_tensor(rng.standard_normal(b))
    ref.backward(grad)
    dq, dp, dn = _cuda_ops.triplet_backward(grad.to("cuda", dtype), q, p, n, margin)
    for got, want in ((dq, q64.grad), (dp, p64.grad), (dn, n64.grad)):
        torch.testing.assert_close(got.cpu().double(), want, **tol)
    # The CPU path agrees too.
    cpu = deeprank.triplet_loss(q.cpu(), p.cpu(), n.cpu(), margin, reduction="none")
    torch.testing.assert_close(losses.cpu(), cpu, **tol)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triplet_inactive_and_nan_rows(rng, dtype):
    d = 12
    q = rng.standard_normal((4, d))
    p = q + 0.01 * rng.standard_normal((4, d))
    n = q + 10.0
    n[1] = q[1] + 1e-3  # row 1: active (positive far from the query relative to the negative)
    p[1] = q[1] + 5.0
    q[3, 2] = np.nan  # row 3: NaN
    q, p, n = (_cuda(a, dtype) for a in (q, p, n))
    losses = _cuda_ops.triplet_forward(q, p, n, 1.0).cpu()
    assert losses[0] == 0 and losses[2] == 0 and losses[1] > 0 and torch.isnan(losses[3])
    grad = torch.full((4,), 0.5, dtype=dtype, device="cuda")
    grad[2] = float("nan")  # an inactive row stays exactly 0 even with a NaN upstream gradient
    dq, dp, dn = (t.cpu() for t in _cuda_ops.triplet_backward(grad, q, p, n, 1.0))
    for g in (dq, dp, dn):
        assert torch.equal(g[0], torch.zeros(d, dtype=dtype))
        assert torch.equal(g[2], torch.zeros(d, dtype=dtype))
        assert torch.isnan(g[3]).all()
    torch.testing.assert_close(dq[1], (2 * 0.5 * (n[1] - p[1])).cpu())
    torch.testing.assert_close(dp[1], (2 * 0.5 * (p[1] - q[1])).cpu())
    torch.testing.assert_close(dn[1], (2 * 0.5 * (q[1] - n[1])).cpu())


@pytest.mark.cuda
@gpu
def test_triplet_misaligned_rows_use_the_scalar_path(rng):
    b, d = 6, 64
    storage = torch.empty(3 * (b * d + 1), device="cuda")
    q, p, n = (storage[i * (b * d + 1) + 1 : (i + 1) * (b * d + 1)].view(b, d) for i in range(3))
    for t in (q, p, n):
        t.copy_(_cuda(rng.standard_normal((b, d))))
    assert q.data_ptr() % 16 != 0 and q.is_contiguous()
    ref, *_ = _triplet_reference(q, p, n, 1.0)
    torch.testing.assert_close(
        _cuda_ops.triplet_forward(q, p, n, 1.0).cpu().double(), ref.detach(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.cuda
@gpu
def test_triplet_gradcheck():
    gen = torch.Generator(device="cuda").manual_seed(0)
    args = [
        torch.randn(6, 9, dtype=torch.float64, device="cuda", generator=gen, requires_grad=True)
        for _ in range(3)
    ]
    assert torch.autograd.gradcheck(lambda q, p, n: _CudaTriplet.apply(q, p, n, 1.5), args)
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda q, p, n, r=reduction: deeprank.triplet_loss(q, p, n, 1.5, reduction=r), args
        )


@pytest.mark.cuda
@gpu
def test_triplet_mixed_devices_raise(rng):
    q = _cuda(rng.standard_normal((3, 4)))
    cpu = torch.as_tensor(rng.standard_normal((3, 4)), dtype=torch.float32)
    with pytest.raises((ValueError, RuntimeError), match="(?i)device|cuda|cpu"):
        deeprank.triplet_loss(q, cpu, q)
    with pytest.raises(ValueError, match="device"):
        _cuda_ops.triplet_forward(q, cpu, q, 1.0)


# ----------------------------------------------------------------------------------------------
# Local response normalization
# ----------------------------------------------------------------------------------------------

LRN_SHAPES = [
    (2, 7, 5, 6),
    (1, 1, 3, 3),
    (3, 4, 17),
    (2, 16, 1, 1),
    (1, 9, 2, 3, 4),
    (2, 37, 9, 11),
    (2, 96, 13, 13),
]
LRN_SIZES = [1, 2, 3, 4, 5, 6, 9, 17, 32, 40]


def _lrn_torch64(x, grad_y, size, alpha, beta, k):
    x = x.detach().cpu().double().requires_grad_()
    y = F.local_response_norm(x, size, alpha=alpha, beta=beta, k=k)
    (gx,) = torch.autograd.grad(y, x, grad_y.detach().cpu().double())
    return y.detach(), gx


class _CudaLrn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        ctx.save_for_backward(x)
        ctx.args = (size, alpha, beta, k)
        return _cuda_ops.lrn_forward(x, size, alpha, beta, k)

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        return _cuda_ops.lrn_backward(grad_y.contiguous(), x, *ctx.args), None, None, None, None


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", LRN_SIZES)
@pytest.mark.parametrize("shape", LRN_SHAPES)
def test_lrn_matches_torch_float64(rng, dtype, size, shape):
    alpha, beta, k = 0.3, 0.75, 1.5  # large alpha so the window really matters
    x = _cuda(rng.standard_normal(shape), dtype)
    grad_y = _cuda(rng.standard_normal(shape), dtype)
    y = _cuda_ops.lrn_forward(x, size, alpha, beta, k)
    gx = _cuda_ops.lrn_backward(grad_y, x, size, alpha, beta, k)
    y64, gx64 = _lrn_torch64(x, grad_y, size, alpha, beta, k)
    tol = {"rtol": 2e-5, "atol": 2e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    gtol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else tol  # two terms that can cancel
    torch.testing.assert_close(y.cpu().double(), y64, **tol)
    torch.testing.assert_close(gx.cpu().double(), gx64, **gtol)
    # The CPU path and torch's own CUDA op agree.
    torch.testing.assert_close(y.cpu(), deeprank.lrn(x.cpu(), size, alpha, beta, k), **tol)
    torch.testing.assert_close(y, F.local_response_norm(x, size, alpha=alpha, beta=beta, k=k), **tol)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.0, 2.3])
def test_lrn_alexnet_parameters_and_betas(rng, beta):
    x = _cuda(rng.standard_normal((2, 96, 7, 7)) * 10)
    grad_y = _cuda(rng.standard_normal((2, 96, 7, 7)))
    y = _cuda_ops.lrn_forward(x, 5, 1e-4, beta, 2.0)
    gx = _cuda_ops.lrn_backward(grad_y, x, 5, 1e-4, beta, 2.0)
    y64, gx64 = _lrn_torch64(x, grad_y, 5, 1e-4, beta, 2.0)
    torch.testing.assert_close(y.cpu().double(), y64, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(gx.cpu().double(), gx64, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@gpu
def test_lrn_non_finite_values_stay_local(rng):
    x = rng.standard_normal((1, 12, 2, 2))
    x[0, 3, 0, 0] = np.inf
    x[0, 8, 1, 1] = np.nan
    x = _cuda(x)
    y = _cuda_ops.lrn_forward(x, 3, 0.1, 0.75, 1.0).cpu().double()
    y64 = F.local_response_norm(x.cpu().double(), 3, alpha=0.1, beta=0.75, k=1.0)
    assert torch.equal(torch.isnan(y), torch.isnan(y64))
    torch.testing.assert_close(y, y64, rtol=2e-5, atol=2e-6, equal_nan=True)


@pytest.mark.cuda
@gpu
def test_lrn_gradcheck():
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape, size in (
        ((2, 6, 3, 2), 3),
        ((2, 9, 4), 4),
        ((1, 5, 2, 2), 5),
        ((1, 4, 2, 2), 7),
        ((1, 3, 2, 1), 40),
    ):
        x = torch.randn(shape, dtype=torch.float64, device="cuda", generator=gen, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t, s=size: _CudaLrn.apply(t, s, 0.5, 0.75, 1.0), (x,))
        assert torch.autograd.gradcheck(lambda t, s=size: deeprank.lrn(t, s, 0.5, 0.75, 1.0), (x,))


@pytest.mark.cuda
@gpu
def test_lrn_module_on_cuda_matches_torch(rng):
    x = _cuda(rng.standard_normal((4, 96, 11, 11)))
    ours = deeprank.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x)
    theirs = torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x)
    assert ours.is_cuda
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=2e-6)


# ----------------------------------------------------------------------------------------------
# Without a GPU
# ----------------------------------------------------------------------------------------------

CSRC = Path(__file__).resolve().parents[2] / "csrc"


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """Builds a kernel emulation driver (the real .cu code on a CPU SIMT emulator); returns a runner."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None or not CSRC.is_dir():
        pytest.skip("needs a C++20 compiler and the csrc/ sources")
    out_dir = tmp_path_factory.mktemp("cuda_emulation")
    built: dict[str, Path] = {}

    def run(driver: str, *args: object, timeout: float = 300) -> str:
        if driver not in built:
            exe = out_dir / Path(driver).stem
            cmd = [
                cxx,
                "-std=c++20",
                "-O1",
                "-pthread",
                "-DDEEPRANK_CUDA_EMULATION",
                f"-I{CSRC}",
                "-x",
                "c++",
                str(CSRC / driver),
                "-o",
                str(exe),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0 and "barrier" in proc.stderr and "No such file" in proc.stderr:
                pytest.skip("the compiler lacks C++20 <barrier>")
            assert proc.returncode == 0, proc.stderr[-4000:]
            built[driver] = exe
        # A divergent warp intrinsic deadlocks the emulator: the timeout turns that into a failure.
        proc = subprocess.run(
            [str(built[driver]), *map(str, args)], capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0 and proc.stdout.rstrip().endswith("ok"), (
            proc.stdout[-4000:] + proc.stderr[-2000:]
        )
        return proc.stdout

    return run


# (M, N, D, K, seed, mode, emulated SM count): NaN rows, ties, k = N, databases whose neighbours all
# sit in the last split, every queries-per-block step (8, 16, 32, 64), several dimension stages.
EMULATED_TOPK = [
    (4, 50, 7, 50, 10, "nan", 2),
    (6, 200, 5, 60, 8, "ties", 2),
    (1, 300, 3, 300, 14, "ties", 8),
    (2, 1200, 9, 40, 11, "sorted", 4),
    (9, 300, 40, 33, 7, "normal", 2),
    (20, 300, 17, 10, 4, "sorted", 2),
    (33, 300, 5, 5, 3, "normal", 2),
]
EMULATED_TOPK_SLOW = [
    (3, 3000, 9, 40, 11, "sorted", 4),
    (9, 700, 1000, 33, 7, "normal", 2),
    (20, 1000, 17, 10, 4, "normal", 2),
    (70, 3000, 5, 64, 5, "normal", 2),
    (1, 5000, 8, 100, 6, "normal", 4),
    (6, 1400, 5, 150, 9, "ties", 3),
    (3, 3000, 9, 40, 11, "nan", 4),
    (2, 2000, 4, 1024, 12, "normal", 2),
    (33, 1500, 128, 1, 13, "normal", 2),
]


@pytest.mark.parametrize(
    "case", EMULATED_TOPK + [pytest.param(c, marks=pytest.mark.slow) for c in EMULATED_TOPK_SLOW]
)
def test_topk_kernels_under_cpu_emulation(emulated, case):
    """The top-K plan, launcher and kernels, bit for bit against the same ranking computed on the CPU."""
    out = emulated("topk/topk_emulation_main.cuh", *case)
    assert out.startswith("plan ")


def test_triplet_kernels_under_cpu_emulation(emulated):
    emulated("triplet/triplet_emulation_main.cuh")


def test_lrn_kernels_under_cpu_emulation(emulated):
    emulated("lrn/lrn_emulation_main.cuh")


def test_cuda_module_imports_and_reports_devices_without_crashing():
    mod = cuda_module()
    info = deeprank.build_info()
    assert info["cuda_compiled"] == (mod is not None)
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    if mod is None:
        assert info["cuda_devices"] == 0
        return
    try:
        count = mod.device_count()
    except RuntimeError as e:  # no driver or no GPU: a clear message, and build_info says 0
        assert str(e)
        assert info["cuda_devices"] == 0
    else:
        assert count == info["cuda_devices"]
    assert mod.lrn_max_size >= 5


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or cuda_module() is None, reason="needs torch with a GPU and _cuda"
)
def test_cuda_module_sees_the_gpu_torch_sees():
    """Where torch has a GPU, deeprank._cuda must see it too (else every GPU test above would skip quietly).

    The usual cause is a driver older than the CUDA runtime deeprank._cuda was built with.
    """
    try:
        count = cuda_module().device_count()
    except RuntimeError as e:
        pytest.fail(f"deeprank._cuda cannot use the GPU torch sees: {e}")
    assert count == torch.cuda.device_count()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: _cuda_ops.topk(torch.zeros(2, 3), torch.zeros(4, 3), 2), "queries must be on a CUDA device"),
        (lambda: _cuda_ops.topk("q", torch.zeros(4, 3), 2), "queries must be a torch CUDA tensor"),
        (lambda: _cuda_ops.triplet_forward(*(torch.zeros(2, 3),) * 3, 1.0), "q must be on a CUDA device"),
        (
            lambda: _cuda_ops.lrn_forward(torch.zeros(2, 3, 4), 5, 1e-4, 0.75, 2.0),
            "x must be on a CUDA device",
        ),
    ],
)
def test_cuda_entry_points_reject_cpu_tensors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
