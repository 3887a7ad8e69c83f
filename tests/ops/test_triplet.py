"""deeprank.triplet_loss and the deeprank::triplet_* ops against float64 references, on the CPU (every
SIMD variant) and CUDA.

One ``sample_inputs`` feeds the correctness, gradient, gradcheck and opcheck tests on both devices
(``device`` / ``device_isa`` from tests/ops/conftest.py). CUDA-only behaviour (misaligned rows, mixed
devices, the CUDA kernels without the dispatcher) is in the tests marked ``cuda``; CPU-only behaviour
(threads, the binding boundary) in unmarked tests. The nn module is tested in tests/test_nn.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deeprank
from deeprank import _C
from deeprank.ops import cuda as cuda_ops
from deeprank.ops.reference import triplet_loss_reference

# [B, D] of the sample set: B and D of 1, odd and even sizes, vector tails on the CPU, several blocks
# per row and rows of more than one block's reach on the GPU.
SHAPES = [(1, 1), (5, 3), (7, 3), (33, 16), (33, 17), (20, 257), (64, 128), (5, 1031), (7, 1000), (3, 8192)]
SHAPES += [(2, 9001), (4, 20000)]
SMALL_SHAPES = [(1, 1), (5, 3), (6, 5)]  # for gradcheck and opcheck, whose cost grows with the elements


def _mixed_margin(q, p, n):
    """A margin that leaves about half of the triplets active (so both branches are exercised)."""
    with torch.no_grad():
        gap = ((q - n) ** 2).sum(1).double() - ((q - p) ** 2).sum(1).double()
    return float(gap.median()) + 1e-3


def sample_inputs(device, rng, dtype=torch.float64, *, requires_grad=False, shapes=SHAPES):
    """``(q, p, n, margin)`` for each ``[B, D]`` in ``shapes``, on ``device``: standard normal rows scaled
    by 1/sqrt(D), and a margin that leaves about half of the triplets active."""
    samples = []
    for b, d in shapes:
        q, p, n = (
            torch.tensor(rng.standard_normal((b, d)) / np.sqrt(d), dtype=dtype, device=device)
            for _ in range(3)
        )
        margin = _mixed_margin(q, p, n)
        samples.append((*(t.requires_grad_(requires_grad) for t in (q, p, n)), margin))
    return samples


def _triplets(rng, b, d, dtype=torch.float64, requires_grad=False, device="cpu"):
    return [
        torch.tensor(rng.standard_normal((b, d)), dtype=dtype, device=device, requires_grad=requires_grad)
        for _ in range(3)
    ]


def _loop_reference(q, p, n, margin):
    """Losses and gradients of the summed loss, one triplet at a time in float64 (the paper's formulas)."""
    q, p, n = (t.detach().cpu().double().numpy() for t in (q, p, n))
    losses = np.zeros(len(q))
    dq, dp, dn = np.zeros_like(q), np.zeros_like(q), np.zeros_like(q)
    for i in range(len(q)):
        hinge = margin + np.sum((q[i] - p[i]) ** 2) - np.sum((q[i] - n[i]) ** 2)
        if hinge > 0:
            losses[i] = hinge
            dq[i], dp[i], dn[i] = 2 * (n[i] - p[i]), 2 * (p[i] - q[i]), 2 * (q[i] - n[i])
    return losses, dq, dp, dn


def _tolerance(dtype, d=1):
    return dict(rtol=1e-5, atol=1e-4 * d) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12 * d)


def _double(t):
    return t.detach().cpu().double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(rng, device_isa, dtype, shape):
    ((q, p, n, margin),) = sample_inputs(device_isa, rng, dtype, shapes=[shape])
    expected = triplet_loss_reference(_double(q), _double(p), _double(n), margin, "none")
    for reduction in ("none", "sum", "mean"):
        got = deeprank.triplet_loss(q, p, n, margin, reduction)
        assert got.dtype == dtype and got.device == q.device
        want = {"none": expected, "sum": expected.sum(), "mean": expected.mean()}[reduction]
        torch.testing.assert_close(_double(got), want, **_tolerance(dtype, shape[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradients_match_per_triplet_loop(rng, device_isa, dtype, shape):
    ((q, p, n, margin),) = sample_inputs(device_isa, rng, dtype, requires_grad=True, shapes=[shape])
    losses = deeprank.triplet_loss(q, p, n, margin, "none")
    losses.sum().backward()
    want_l, want_dq, want_dp, want_dn = _loop_reference(q, p, n, margin)
    tol = _tolerance(dtype)
    torch.testing.assert_close(_double(losses), torch.from_numpy(want_l), **tol)
    for got, want in ((q.grad, want_dq), (p.grad, want_dp), (n.grad, want_dn)):
        assert got.dtype == dtype and got.device == q.device
        torch.testing.assert_close(_double(got), torch.from_numpy(want), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_op_matches_autograd_of_reference(rng, device, dtype):
    # The backward op alone, with a non-uniform upstream gradient, for every sample.
    for q, p, n, margin in sample_inputs(device, rng, dtype):
        grad = torch.tensor(rng.standard_normal(q.shape[0]), dtype=dtype, device=device)
        got = torch.ops.deeprank.triplet_backward(grad, q, p, n, margin)
        q64, p64, n64 = (_double(t).requires_grad_() for t in (q, p, n))
        ref = triplet_loss_reference(q64, p64, n64, margin, "none")
        want = torch.autograd.grad(ref, (q64, p64, n64), _double(grad))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(_double(g), w, **_tolerance(dtype))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradients_match_reference_autograd(rng, device_isa, reduction):
    q, p, n = _triplets(rng, 31, 67, requires_grad=True, device=device_isa)
    margin = _mixed_margin(q, p, n)
    weights = torch.tensor(rng.standard_normal(31), device=device_isa)
    ours = deeprank.triplet_loss(q, p, n, margin, reduction)
    ref = triplet_loss_reference(q, p, n, margin, reduction)
    if reduction == "none":  # a non-uniform upstream gradient
        ours, ref = (ours * weights).sum(), (ref * weights).sum()
    got = torch.autograd.grad(ours, (q, p, n))
    want = torch.autograd.grad(ref, (q, p, n))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("margin", [0.0, 1.5, -0.5])
def test_gradcheck(rng, device_isa, reduction, margin):
    for q, p, n, mixed in sample_inputs(device_isa, rng, requires_grad=True, shapes=SMALL_SHAPES):
        assert torch.autograd.gradcheck(
            lambda a, b, c, m=margin + mixed: deeprank.triplet_loss(a, b, c, m, reduction), (q, p, n)
        )


def test_double_backward(rng, device):
    for q, p, n, margin in sample_inputs(device, rng, requires_grad=True, shapes=SMALL_SHAPES):
        assert torch.autograd.gradgradcheck(
            lambda a, b, c, m=margin: deeprank.triplet_loss(a, b, c, m, "none"), (q, p, n)
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(rng, device, dtype):
    # Schema, fake kernel, autograd registration and torch.compile consistency of both ops.
    for q, p, n, margin in sample_inputs(device, rng, dtype, requires_grad=True, shapes=SMALL_SHAPES):
        grad = torch.rand(q.shape[0], dtype=dtype, device=device)
        torch.library.opcheck(torch.ops.deeprank.triplet_forward.default, (q, p, n, margin))
        torch.library.opcheck(torch.ops.deeprank.triplet_backward.default, (grad, q, p, n, margin))


def test_satisfied_triplets_get_exactly_zero_gradient(rng, device_isa):
    q, p, n = _triplets(rng, 16, 37, torch.float32, device=device_isa)
    p = q + 1e-3 * p  # positives close, negatives far: every hinge is inactive
    n = n * 10
    n[3, 0] = float("inf")  # inactive with an infinite coordinate: still exactly 0, never inf * 0
    q, p, n = (t.requires_grad_() for t in (q, p, n))
    loss = deeprank.triplet_loss(q, p, n, margin=1.0)
    assert loss.item() == 0.0
    loss.backward()
    for g in (q.grad, p.grad, n.grad):
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where", ["q", "p", "n"])
def test_nan_gives_nan_loss_and_gradients(rng, device_isa, dtype, where):
    q, p, n = _triplets(rng, 6, 19, dtype, device=device_isa)
    # Make every triplet satisfied, so a hidden NaN would otherwise read as a zero gradient.
    p = q + 1e-3 * p
    n = n + 10
    {"q": q, "p": p, "n": n}[where][2, 5] = float("nan")
    q, p, n = (t.requires_grad_() for t in (q, p, n))
    losses = deeprank.triplet_loss(q, p, n, 1.0, "none")
    assert torch.isnan(losses[2]) and not torch.isnan(losses[[0, 1, 3, 4, 5]]).any()
    losses.sum().backward()
    for g in (q.grad, p.grad, n.grad):
        assert torch.isnan(g[2]).all()
        assert torch.equal(g[[0, 1, 3, 4, 5]], torch.zeros(5, 19, dtype=dtype, device=device_isa))
    assert torch.isnan(deeprank.triplet_loss(q, p, n, 1.0, "mean"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inactive_active_and_nan_rows_of_the_ops(rng, device_isa, dtype):
    d = 12
    q = rng.standard_normal((4, d))
    p = q + 0.01 * rng.standard_normal((4, d))
    n = q + 10.0
    n[1] = q[1] + 1e-3  # row 1: active (positive far from the query relative to the negative)
    p[1] = q[1] + 5.0
    q[3, 2] = np.nan  # row 3: NaN
    q, p, n = (torch.tensor(a, dtype=dtype, device=device_isa) for a in (q, p, n))
    losses = torch.ops.deeprank.triplet_forward(q, p, n, 1.0).cpu()
    assert losses[0] == 0 and losses[2] == 0 and losses[1] > 0 and torch.isnan(losses[3])
    grad = torch.full((4,), 0.5, dtype=dtype, device=device_isa)
    grad[2] = float("nan")  # an inactive row stays exactly 0 even with a NaN upstream gradient
    dq, dp, dn = (t.cpu() for t in torch.ops.deeprank.triplet_backward(grad, q, p, n, 1.0))
    for g in (dq, dp, dn):
        assert torch.equal(g[0], torch.zeros(d, dtype=dtype))
        assert torch.equal(g[2], torch.zeros(d, dtype=dtype))
        assert torch.isnan(g[3]).all()
    q, p, n = q.cpu(), p.cpu(), n.cpu()
    torch.testing.assert_close(dq[1], 2 * 0.5 * (n[1] - p[1]))
    torch.testing.assert_close(dp[1], 2 * 0.5 * (p[1] - q[1]))
    torch.testing.assert_close(dn[1], 2 * 0.5 * (q[1] - n[1]))


def test_float32_large_magnitudes_accumulate_in_double(rng, device_isa):
    # Squared distances of ~1e8 per row: a float32 running sum drifts by far more than the tolerance.
    d = 4096
    q = torch.full((8, d), 100.0)
    p = q + 150 * torch.tensor(rng.standard_normal((8, d)), dtype=torch.float32)
    n = q + 150 * torch.tensor(rng.standard_normal((8, d)), dtype=torch.float32)
    margin = _mixed_margin(q, p, n)
    got = deeprank.triplet_loss(
        q.to(device_isa), p.to(device_isa), n.to(device_isa), margin, reduction="none"
    )
    want = triplet_loss_reference(q.double(), p.double(), n.double(), margin, "none")
    assert (want > 0).any()
    torch.testing.assert_close(_double(got), want, rtol=1e-6, atol=1e-2)


def test_non_contiguous_inputs(rng, device):
    q, p, n = (torch.tensor(rng.standard_normal((40, 24)), device=device).t() for _ in range(3))  # strided
    assert not q.is_contiguous()
    got = deeprank.triplet_loss(q, p, n, 30.0, "none")
    torch.testing.assert_close(got, triplet_loss_reference(q, p, n, 30.0, "none"), rtol=1e-12, atol=1e-12)


def test_misaligned_rows(rng, device):
    # Rows that start one element past an alignment boundary (on the GPU: the scalar path).
    b, d = 6, 64
    storage = torch.empty(3 * (b * d + 1), device=device)
    q, p, n = (storage[i * (b * d + 1) + 1 : (i + 1) * (b * d + 1)].view(b, d) for i in range(3))
    for t in (q, p, n):
        t.copy_(torch.as_tensor(rng.standard_normal((b, d))))
    assert q.data_ptr() % 16 != 0 and q.is_contiguous()
    ref = triplet_loss_reference(_double(q), _double(p), _double(n), 1.0, "none")
    got = torch.ops.deeprank.triplet_forward(q, p, n, 1.0)
    torch.testing.assert_close(_double(got), ref, rtol=1e-5, atol=1e-6)


def test_empty_batch(device):
    q = torch.zeros(0, 8, device=device, requires_grad=True)
    assert deeprank.triplet_loss(q, q, q, 1.0, "none").shape == (0,)
    total = deeprank.triplet_loss(q, q, q, 1.0, "sum")
    assert total.item() == 0.0
    total.backward()
    assert q.grad.shape == (0, 8)


def test_zero_dimensional_embeddings_give_margin(device):
    q = torch.zeros(3, 0, device=device)
    got = deeprank.triplet_loss(q, q, q, 0.25, "none")
    torch.testing.assert_close(got.cpu(), torch.full((3,), 0.25))


# --- CUDA only ------------------------------------------------------------------------------------------


class _CudaTriplet(torch.autograd.Function):
    """The CUDA kernels alone under autograd (independent of the dispatcher in deeprank.ops.triplet)."""

    @staticmethod
    def forward(ctx, q, p, n, margin):
        ctx.save_for_backward(q, p, n)
        ctx.margin = margin
        return cuda_ops.triplet_forward(q, p, n, margin)

    @staticmethod
    def backward(ctx, grad):
        q, p, n = ctx.saved_tensors
        return (*cuda_ops.triplet_backward(grad.contiguous(), q, p, n, ctx.margin), None)


@pytest.mark.cuda
def test_cuda_kernels_gradcheck_without_the_dispatcher(rng):
    for q, p, n, margin in sample_inputs("cuda", rng, requires_grad=True, shapes=[(6, 9), *SMALL_SHAPES]):
        assert torch.autograd.gradcheck(lambda a, b, c, m=margin: _CudaTriplet.apply(a, b, c, m), (q, p, n))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(rng, dtype):
    for q, p, n, margin in sample_inputs("cuda", rng, dtype):
        for reduction in ("none", "sum"):
            want = deeprank.triplet_loss(q.cpu(), p.cpu(), n.cpu(), margin, reduction)
            torch.testing.assert_close(deeprank.triplet_loss(q, p, n, margin, reduction).cpu(), want)
        grad = torch.rand(q.shape[0], dtype=dtype)
        got = torch.ops.deeprank.triplet_backward(grad.cuda(), q, p, n, margin)
        want = torch.ops.deeprank.triplet_backward(grad, q.cpu(), p.cpu(), n.cpu(), margin)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a.cpu(), b)


@pytest.mark.cuda
def test_cuda_mixed_devices_raise(rng):
    q = torch.as_tensor(rng.standard_normal((3, 4)), dtype=torch.float32, device="cuda")
    cpu = torch.as_tensor(rng.standard_normal((3, 4)), dtype=torch.float32)
    with pytest.raises((ValueError, RuntimeError), match="(?i)device|cuda|cpu"):
        deeprank.triplet_loss(q, cpu, q)
    with pytest.raises(ValueError, match="device"):
        cuda_ops.triplet_forward(q, cpu, q, 1.0)


# --- CPU only -------------------------------------------------------------------------------------------


def test_threads_give_identical_results(rng):
    q, p, n = _triplets(rng, 300, 129, torch.float32, requires_grad=True)
    margin = _mixed_margin(q, p, n)
    before = deeprank.get_num_threads()
    results = []
    try:
        for threads in (1, 3):
            deeprank.set_num_threads(threads)
            loss = deeprank.triplet_loss(q, p, n, margin, "none")
            results.append((loss, *torch.autograd.grad(loss.sum(), (q, p, n))))
    finally:
        deeprank.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# --- bad input ---------------------------------------------------------------------------------------


def test_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same \\[B, D\\] shape"):
        deeprank.triplet_loss(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4, 2))


def test_rejects_1d_input():
    with pytest.raises(ValueError, match="q must be a 2-D"):
        deeprank.triplet_loss(torch.zeros(4), torch.zeros(4), torch.zeros(4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_rejects_wrong_dtype(dtype):
    x = torch.zeros(2, 3, dtype=dtype)
    with pytest.raises(TypeError, match="q must be float32 or float64"):
        deeprank.triplet_loss(x, x, x)


def test_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match="one dtype"):
        deeprank.triplet_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3))


def test_rejects_mixed_devices():
    # The meta device stands in for a second device on machines without a GPU.
    with pytest.raises(ValueError, match="one device.*p on meta"):
        deeprank.triplet_loss(torch.zeros(2, 3), torch.zeros(2, 3, device="meta"), torch.zeros(2, 3))


def test_rejects_non_tensor():
    with pytest.raises(TypeError, match="p must be a torch.Tensor"):
        deeprank.triplet_loss(torch.zeros(2, 3), np.zeros((2, 3)), torch.zeros(2, 3))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"margin": float("nan")}, ValueError, "margin must be finite"),
        ({"margin": "1"}, TypeError, "margin must be a real number"),
        ({"reduction": "max"}, ValueError, "reduction must be"),
    ],
)
def test_rejects_bad_margin_and_reduction(kwargs, error, match):
    x = torch.zeros(2, 3)
    with pytest.raises(error, match=match):
        deeprank.triplet_loss(x, x, x, **kwargs)


def test_binding_checks_arrays():
    # The binding's precondition guards, reached only by calling _C directly.
    q = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="q must be a float32 or float64 array"):
        _C.triplet_forward(q.astype(np.int32), q, q, 1.0, np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="p must be a 2-D float32 array, got 2-D float64"):
        _C.triplet_forward(q, q.astype(np.float64), q, 1.0, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="n must have the shape of q"):
        _C.triplet_forward(q, q, np.zeros((2, 4), np.float32), 1.0, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="losses must have"):
        _C.triplet_forward(q, q, q, 1.0, np.zeros(3, np.float32))


def test_cuda_entry_point_rejects_cpu_tensors():
    with pytest.raises(ValueError, match="q must be on a CUDA device"):
        cuda_ops.triplet_forward(*(torch.zeros(2, 3),) * 3, 1.0)
