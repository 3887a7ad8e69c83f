"""deeprank.lrn and its CPU kernels against torch's local_response_norm in float64, in every SIMD variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deeprank
from deeprank import _C
from deeprank.nn import LocalResponseNorm
from deeprank.ops.reference import lrn_reference


@pytest.fixture(params=_C.available_isas())
def isa(request):
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa("auto")


def _tensor(rng, shape, dtype=torch.float64, scale=1.0, requires_grad=False):
    return torch.tensor(scale * rng.standard_normal(shape), dtype=dtype, requires_grad=requires_grad)


def _forward_and_grad(fn, x, grad_y):
    x = x.detach().requires_grad_()
    y = fn(x)
    (gx,) = torch.autograd.grad(y, x, grad_y)
    return y.detach(), gx


# Odd and even windows, windows wider than C, C = 1; 4-D, 3-D and 5-D inputs; spatial sizes that are
# not multiples of the vector width (and 1).
SHAPES = [(2, 7, 5, 6), (1, 1, 3, 3), (3, 4, 17), (2, 16, 1, 1), (1, 9, 2, 3, 4), (2, 37, 9, 11)]
SIZES = [1, 2, 3, 4, 5, 6, 9, 40]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_forward_and_gradient_match_torch_float64(rng, isa, shape, size):
    alpha, beta, k = rng.uniform(0.05, 2.0), rng.uniform(0.3, 1.2), rng.uniform(0.5, 3.0)
    x = _tensor(rng, shape, scale=2.0)
    grad_y = _tensor(rng, shape)
    y, gx = _forward_and_grad(lambda t: deeprank.lrn(t, size, alpha, beta, k), x, grad_y)
    y_ref, gx_ref = _forward_and_grad(lambda t: lrn_reference(t, size, alpha, beta, k), x, grad_y)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.0, 2.3])
@pytest.mark.parametrize("size", [2, 5])
def test_fast_exponents_and_general_pow(rng, isa, beta, size):
    # beta 0.75, 0.5 and 1 take sqrt/division paths instead of pow: each must agree with torch.
    x = _tensor(rng, (2, 11, 4, 5), scale=3.0)
    grad_y = _tensor(rng, x.shape)
    y, gx = _forward_and_grad(lambda t: deeprank.lrn(t, size, 0.3, beta, 1.5), x, grad_y)
    y_ref, gx_ref = _forward_and_grad(lambda t: lrn_reference(t, size, 0.3, beta, 1.5), x, grad_y)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 96, 13, 13), (2, 5, 7, 3)])
def test_float32_matches_float64_reference(rng, isa, shape):
    x = _tensor(rng, shape, torch.float32, scale=10.0)
    grad_y = _tensor(rng, shape, torch.float32)
    y, gx = _forward_and_grad(lambda t: deeprank.lrn(t, 5, 1e-2, 0.75, 2.0), x, grad_y)
    assert y.dtype == gx.dtype == torch.float32
    y_ref, gx_ref = _forward_and_grad(
        lambda t: lrn_reference(t, 5, 1e-2, 0.75, 2.0), x.double(), grad_y.double()
    )
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx.double(), gx_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_channel_next_to_small_ones(rng, isa, dtype):
    # A window sum that subtracts the channel leaving the window would keep ~eps * 1e24 of the huge
    # square after it leaves, swamping the O(1) windows that follow; block prefix/suffix sums do not.
    huge = 1e12 if dtype == torch.float64 else 1e15
    x = torch.tensor(rng.uniform(0.5, 1.5, (2, 24, 3, 5)), dtype=dtype)
    x[:, [0, 9]] = huge
    x[1, 17, 1, 2] = -huge
    grad_y = _tensor(rng, x.shape, dtype)
    y, gx = _forward_and_grad(lambda t: deeprank.lrn(t, 3, 1.0, 0.75, 1e-3), x, grad_y)
    y_ref, gx_ref = _forward_and_grad(
        lambda t: lrn_reference(t, 3, 1.0, 0.75, 1e-3), x.double(), grad_y.double()
    )
    rtol, atol = (1e-11, 1e-12) if dtype == torch.float64 else (2e-6, 1e-6)
    torch.testing.assert_close(y.double(), y_ref, rtol=rtol, atol=0)
    # Gradients of O(1) can come out of cancelling O(1) terms: allow an absolute error at that scale.
    torch.testing.assert_close(gx.double(), gx_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("shape", [(2, 5, 3, 2), (1, 2, 4), (2, 3, 1, 1)])
def test_gradcheck(rng, isa, size, shape):
    x = _tensor(rng, shape, requires_grad=True)
    beta = float(rng.choice([0.75, 0.4]))
    assert torch.autograd.gradcheck(lambda t: deeprank.lrn(t, size, 0.7, beta, 1.3), (x,))


def test_double_backward_raises_clearly(rng):
    x = _tensor(rng, (1, 4, 2, 2), requires_grad=True)
    (gx,) = torch.autograd.grad(deeprank.lrn(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        gx.sum().backward()


def test_nan_and_inf_stay_in_their_windows(rng, isa):
    x = _tensor(rng, (1, 12, 3, 4))
    x[0, 6, 1, 1] = float("nan")
    x[0, 2, 0, 3] = float("inf")
    y = deeprank.lrn(x, 5, 1e-2, 0.75, 2.0)
    y_ref = lrn_reference(x, 5, 1e-2, 0.75, 2.0)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref))
    assert torch.isnan(y[0, 4:9, 1, 1]).all()  # every output whose window holds the NaN
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-13, equal_nan=True)


# Channels-last (NHWC) inputs run a kernel of their own (tiles transposed in cache): odd C and sizes,
# C = 1 and windows wider than C, H*W not a multiple of the vector width, runs longer than a tile
# (the kernel treats [N, H*W, C] as one run of N*H*W positions, across image boundaries).
CL_SHAPES = [(2, 7, 5, 6), (3, 16, 14, 14), (2, 37, 9, 11), (1, 3, 1, 5), (4, 2, 3, 3), (5, 96, 7, 7)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", CL_SHAPES)
@pytest.mark.parametrize("size", [1, 2, 5, 6, 40])
def test_channels_last_matches_reference_and_keeps_layout(rng, isa, dtype, shape, size):
    alpha, beta, k = rng.uniform(0.05, 2.0), float(rng.choice([0.75, 0.6])), rng.uniform(0.5, 3.0)
    x = _tensor(rng, shape, scale=2.0).to(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    grad_y = _tensor(rng, shape).to(memory_format=torch.channels_last)
    y, gx = _forward_and_grad(lambda t: deeprank.lrn(t, size, alpha, beta, k), x.to(dtype), grad_y.to(dtype))
    y_ref, gx_ref = _forward_and_grad(lambda t: lrn_reference(t, size, alpha, beta, k), x, grad_y)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert gx.is_contiguous(memory_format=torch.channels_last) and not gx.is_contiguous()
    tol = {"rtol": 1e-12, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-6}
    torch.testing.assert_close(y, y_ref.to(dtype), **tol)
    torch.testing.assert_close(gx, gx_ref.to(dtype), **tol)


def test_channels_last_with_a_contiguous_gradient(rng):
    # Autograd may hand the backward a gradient in another layout than the saved input.
    x = _tensor(rng, (2, 9, 4, 5), scale=2.0).to(memory_format=torch.channels_last)
    grad_y = _tensor(rng, x.shape)
    assert grad_y.is_contiguous()
    y, gx = _forward_and_grad(lambda t: deeprank.lrn(t, 5, 0.4, 0.75, 1.0), x, grad_y)
    y_ref, gx_ref = _forward_and_grad(lambda t: lrn_reference(t, 5, 0.4, 0.75, 1.0), x, grad_y)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-11, atol=1e-12)


def test_channels_last_gradcheck(rng):
    x = _tensor(rng, (2, 5, 3, 2)).to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: deeprank.lrn(t, 3, 0.7, 0.75, 1.3), (x,))


def test_channels_last_nan_stays_in_its_window(rng):
    x = _tensor(rng, (2, 12, 3, 4)).to(memory_format=torch.channels_last)
    x[1, 6, 2, 1] = float("nan")
    y = deeprank.lrn(x, 5, 1e-2, 0.75, 2.0)
    assert torch.equal(torch.isnan(y), torch.isnan(lrn_reference(x, 5, 1e-2, 0.75, 2.0)))
    assert int(torch.isnan(y).sum()) == 5


def test_binding_channels_last_is_the_transposed_planar_result(rng):
    x = rng.standard_normal((3, 11, 20)).astype(np.float32)  # [N, C, S]
    y = np.empty_like(x)
    _C.lrn_forward(x, 5, 0.5, 0.75, 2.0, y)
    x_nsc = np.ascontiguousarray(x.transpose(0, 2, 1))
    y_nsc = np.empty_like(x_nsc)
    _C.lrn_forward(x_nsc, 5, 0.5, 0.75, 2.0, y_nsc, channels_last=True)
    np.testing.assert_array_equal(y_nsc, y.transpose(0, 2, 1))
    g = rng.standard_normal(x.shape).astype(np.float32)
    gx, gx_nsc = np.empty_like(x), np.empty_like(x_nsc)
    _C.lrn_backward(g, x, 5, 0.5, 0.75, 2.0, gx)
    _C.lrn_backward(np.ascontiguousarray(g.transpose(0, 2, 1)), x_nsc, 5, 0.5, 0.75, 2.0, gx_nsc, True)
    np.testing.assert_array_equal(gx_nsc, gx.transpose(0, 2, 1))


def test_other_strided_inputs(rng):
    x = _tensor(rng, (2, 6, 5, 8))[..., ::2]  # neither contiguous nor channels-last
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        deeprank.lrn(x, 3), lrn_reference(x, 3, 1e-4, 0.75, 2.0), rtol=1e-12, atol=1e-13
    )


@pytest.mark.parametrize("channels_last", [False, True])
def test_threads_give_identical_results(rng, channels_last):
    x = _tensor(rng, (4, 33, 20, 21), torch.float32, scale=30.0)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    before = deeprank.get_num_threads()
    results = []
    try:
        for threads in (1, 3):
            deeprank.set_num_threads(threads)
            y = deeprank.lrn(x, 5, 1e-3, 0.75, 2.0)
            results.append((y, *torch.autograd.grad(y.sum(), x)))
    finally:
        deeprank.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_empty_input():
    x = torch.zeros(0, 4, 3, 3, requires_grad=True)
    y = deeprank.lrn(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_defaults_are_alexnets():
    x = torch.rand(1, 8, 2, 2, dtype=torch.float64) * 50
    torch.testing.assert_close(deeprank.lrn(x), F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=2.0))


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, kwargs, error, match",
    [
        (torch.zeros(4, 3), {}, ValueError, "at least 3-D"),
        (torch.zeros(1, 4, 3, dtype=torch.int32), {}, TypeError, "x must be float32 or float64"),
        (torch.zeros(1, 4, 3, dtype=torch.float16), {}, TypeError, "x must be float32 or float64"),
        (np.zeros((1, 4, 3)), {}, TypeError, "x must be a torch.Tensor"),
        (torch.zeros(1, 4, 3), {"size": 0}, ValueError, "size must be >= 1"),
        (torch.zeros(1, 4, 3), {"size": 2.0}, TypeError, "size must be an int"),
        (torch.zeros(1, 4, 3), {"alpha": float("inf")}, ValueError, "alpha must be finite"),
        (torch.zeros(1, 4, 3), {"beta": None}, TypeError, "beta must be a real number"),
    ],
)
def test_rejects_bad_input(x, kwargs, error, match):
    with pytest.raises(error, match=match):
        deeprank.lrn(x, **kwargs)


def test_binding_checks_arrays():
    x = np.zeros((1, 4, 3), np.float32)
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        _C.lrn_forward(x.astype(np.int64), 3, 1e-4, 0.75, 2.0, x.copy())
    with pytest.raises(ValueError, match="y must be a 3-D float32 array"):
        _C.lrn_forward(x, 3, 1e-4, 0.75, 2.0, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        _C.lrn_forward(x, 0, 1e-4, 0.75, 2.0, x.copy())
    with pytest.raises(ValueError, match="grad_y must have the shape of x"):
        _C.lrn_backward(np.zeros((1, 4, 2), np.float32), x, 3, 1e-4, 0.75, 2.0, x.copy())


# --- module --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, kwargs", [((5,), {}), ((4,), {"alpha": 1e-2, "beta": 0.5, "k": 2.0})])
def test_module_is_a_drop_in_for_torchs(rng, args, kwargs):
    ours, theirs = LocalResponseNorm(*args, **kwargs), torch.nn.LocalResponseNorm(*args, **kwargs)
    assert repr(ours) == repr(theirs)
    assert (ours.size, ours.alpha, ours.beta, ours.k) == (theirs.size, theirs.alpha, theirs.beta, theirs.k)
    x = _tensor(rng, (2, 9, 4, 4), scale=20.0)
    grad_y = _tensor(rng, x.shape)
    y, gx = _forward_and_grad(ours, x, grad_y)
    y_ref, gx_ref = _forward_and_grad(theirs, x, grad_y)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-11, atol=1e-12)


def test_module_rejects_bad_size():
    with pytest.raises(ValueError, match="size must be >= 1"):
        LocalResponseNorm(0)
    with pytest.raises(TypeError, match="size must be an int"):
        LocalResponseNorm(2.5)
