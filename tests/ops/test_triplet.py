"""deeprank.triplet_loss and its CPU kernels against float64 references, in every SIMD variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deeprank
from deeprank import _C
from deeprank.nn import TripletRankingLoss
from deeprank.ops.reference import triplet_loss_reference


@pytest.fixture(params=_C.available_isas())
def isa(request):
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa("auto")


def _triplets(rng, b, d, dtype=torch.float64, requires_grad=False):
    return [
        torch.tensor(rng.standard_normal((b, d)), dtype=dtype, requires_grad=requires_grad) for _ in range(3)
    ]


def _mixed_margin(q, p, n):
    """A margin that leaves about half of the triplets active (so both branches are exercised)."""
    with torch.no_grad():
        gap = ((q - n) ** 2).sum(1).double() - ((q - p) ** 2).sum(1).double()
    return float(gap.median()) + 1e-3


def _loop_reference(q, p, n, margin):
    """Losses and gradients of the summed loss, one triplet at a time in float64 (the paper's formulas)."""
    q, p, n = (t.detach().double().numpy() for t in (q, p, n))
    losses = np.zeros(len(q))
    dq, dp, dn = np.zeros_like(q), np.zeros_like(q), np.zeros_like(q)
    for i in range(len(q)):
        hinge = margin + np.sum((q[i] - p[i]) ** 2) - np.sum((q[i] - n[i]) ** 2)
        if hinge > 0:
            losses[i] = hinge
            dq[i], dp[i], dn[i] = 2 * (n[i] - p[i]), 2 * (p[i] - q[i]), 2 * (q[i] - n[i])
    return losses, dq, dp, dn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b, d", [(1, 1), (7, 3), (33, 16), (20, 257), (5, 1031)])
def test_forward_matches_reference(rng, isa, dtype, b, d):
    q, p, n = _triplets(rng, b, d, dtype)
    margin = _mixed_margin(q, p, n)
    expected = triplet_loss_reference(q.double(), p.double(), n.double(), margin, "none")
    tol = dict(rtol=1e-5, atol=1e-4 * d) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12 * d)
    for reduction in ("none", "sum", "mean"):
        got = deeprank.triplet_loss(q, p, n, margin, reduction)
        assert got.dtype == dtype
        want = {"none": expected, "sum": expected.sum(), "mean": expected.mean()}[reduction]
        torch.testing.assert_close(got.double(), want, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b, d", [(1, 1), (9, 3), (40, 257)])
def test_gradients_match_per_triplet_loop(rng, isa, dtype, b, d):
    q, p, n = _triplets(rng, b, d, dtype, requires_grad=True)
    margin = _mixed_margin(q, p, n)
    losses = deeprank.triplet_loss(q, p, n, margin, "none")
    losses.sum().backward()
    want_l, want_dq, want_dp, want_dn = _loop_reference(q, p, n, margin)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses.detach().double(), torch.from_numpy(want_l), **tol)
    for got, want in ((q.grad, want_dq), (p.grad, want_dp), (n.grad, want_dn)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), torch.from_numpy(want), **tol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradients_match_reference_autograd(rng, isa, reduction):
    q, p, n = _triplets(rng, 31, 67, requires_grad=True)
    margin = _mixed_margin(q, p, n)
    weights = torch.tensor(rng.standard_normal(31))
    ours = deeprank.triplet_loss(q, p, n, margin, reduction)
    ref = triplet_loss_reference(q, p, n, margin, reduction)
    if reduction == "none":  # a non-uniform upstream gradient
        ours, ref = (ours * weights).sum(), (ref * weights).sum()
    got = torch.autograd.grad(ours, (q, p, n))
    want = torch.autograd.grad(ref, (q, p, n))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_satisfied_triplets_get_exactly_zero_gradient(rng, isa):
    q, p, n = _triplets(rng, 16, 37, torch.float32)
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
def test_nan_gives_nan_loss_and_gradients(rng, isa, dtype, where):
    q, p, n = _triplets(rng, 6, 19, dtype)
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
        assert torch.equal(g[[0, 1, 3, 4, 5]], torch.zeros(5, 19, dtype=dtype))
    assert torch.isnan(deeprank.triplet_loss(q, p, n, 1.0, "mean"))


def test_float32_large_magnitudes_accumulate_in_double(rng, isa):
    # Squared distances of ~1e8 per row: a float32 running sum drifts by far more than the tolerance.
    d = 4096
    q = torch.full((8, d), 100.0)
    p = q + 150 * torch.tensor(rng.standard_normal((8, d)), dtype=torch.float32)
    n = q + 150 * torch.tensor(rng.standard_normal((8, d)), dtype=torch.float32)
    margin = _mixed_margin(q, p, n)
    got = deeprank.triplet_loss(q, p, n, margin, reduction="none")
    want = triplet_loss_reference(q.double(), p.double(), n.double(), margin, "none")
    assert (want > 0).any()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-2)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("margin", [0.0, 1.5, -0.5])
def test_gradcheck(rng, isa, reduction, margin):
    q, p, n = _triplets(rng, 5, 4, requires_grad=True)
    margin = margin + _mixed_margin(q, p, n)
    assert torch.autograd.gradcheck(
        lambda a, b, c: deeprank.triplet_loss(a, b, c, margin, reduction), (q, p, n)
    )


def test_double_backward(rng):
    q, p, n = _triplets(rng, 5, 3, requires_grad=True)
    margin = _mixed_margin(q, p, n)
    assert torch.autograd.gradgradcheck(
        lambda a, b, c: deeprank.triplet_loss(a, b, c, margin, "none"), (q, p, n)
    )


def test_non_contiguous_inputs(rng):
    q, p, n = (torch.tensor(rng.standard_normal((40, 24))).t() for _ in range(3))  # [24, 40], strided
    assert not q.is_contiguous()
    got = deeprank.triplet_loss(q, p, n, 30.0, "none")
    torch.testing.assert_close(got, triplet_loss_reference(q, p, n, 30.0, "none"), rtol=1e-12, atol=1e-12)


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


def test_empty_batch():
    q = torch.zeros(0, 8, requires_grad=True)
    assert deeprank.triplet_loss(q, q, q, 1.0, "none").shape == (0,)
    total = deeprank.triplet_loss(q, q, q, 1.0, "sum")
    assert total.item() == 0.0
    total.backward()
    assert q.grad.shape == (0, 8)


def test_zero_dimensional_embeddings_give_margin():
    q = torch.zeros(3, 0)
    torch.testing.assert_close(deeprank.triplet_loss(q, q, q, 0.25, "none"), torch.full((3,), 0.25))


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
    with pytest.raises(error, match=match):
        TripletRankingLoss(**kwargs)


def test_binding_checks_arrays():
    q = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="q must be a float32 or float64 array"):
        _C.triplet_forward(q.astype(np.int32), q, q, 1.0, np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="p must be a 2-D float32 array, got 2-D float64"):
        _C.triplet_forward(q, q.astype(np.float64), q, 1.0, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="n must have the shape of q"):
        _C.triplet_forward(q, q, np.zeros((2, 4), np.float32), 1.0, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="losses must have"):
        _C.triplet_forward(q, q, q, 1.0, np.zeros(3, np.float32))


# --- module --------------------------------------------------------------------------------------------


def test_module_accepts_stacked_batch(rng):
    q, p, n = _triplets(rng, 6, 10)
    loss = TripletRankingLoss(margin=20.0, reduction="sum")
    torch.testing.assert_close(loss(torch.cat([q, p, n])), loss(q, p, n), rtol=0, atol=0)
    torch.testing.assert_close(loss(q, p, n), triplet_loss_reference(q, p, n, 20.0, "sum"))


def test_module_rejects_bad_stacked_shape():
    loss = TripletRankingLoss()
    with pytest.raises(ValueError, match="\\[3B, D\\]"):
        loss(torch.zeros(7, 4))
    with pytest.raises(ValueError, match="\\[3B, D\\]"):
        loss(torch.zeros(6))
    with pytest.raises(ValueError, match="all of q, p, n"):
        loss(torch.zeros(3, 4), torch.zeros(3, 4))


def test_module_repr():
    assert repr(TripletRankingLoss(0.5, "sum")) == "TripletRankingLoss(margin=0.5, reduction='sum')"
