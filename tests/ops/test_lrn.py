"""deeprank.lrn and the deeprank::lrn_* ops against torch's local_response_norm in float64, on the CPU
(every SIMD variant) and CUDA.

One ``sample_inputs`` feeds the correctness, gradcheck and opcheck tests on both devices (``device`` /
``device_isa`` from tests/ops/conftest.py). CUDA-only behaviour (windows beyond
``deeprank._cuda.lrn_max_size`` falling back to torch, the CUDA kernels without the dispatcher) is in
the tests marked ``cuda``; CPU-only behaviour (channels-last kernels, threads, the binding boundary)
in unmarked tests. The nn module is tested in tests/test_nn.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deeprank
from deeprank import _C
from deeprank._build import cuda_module
from deeprank.ops import cuda as cuda_ops
from deeprank.ops.reference import lrn_reference

# Odd and even windows, windows wider than C (and than the GPU kernels' 32), C = 1; 4-D, 3-D and 5-D
# inputs; spatial sizes that are not multiples of the vector width (and 1); AlexNet's 96 channels.
SHAPES = [
    (2, 7, 5, 6),
    (1, 1, 3, 3),
    (3, 4, 17),
    (2, 16, 1, 1),
    (1, 9, 2, 3, 4),
    (2, 37, 9, 11),
    (2, 96, 13, 13),
]
SIZES = [1, 2, 3, 4, 5, 6, 9, 17, 32, 40]
# (shape, size) for gradcheck, whose cost grows with the elements.
GRADCHECK_CASES = [(shape, size) for size in (2, 3, 4) for shape in ((2, 5, 3, 2), (1, 2, 4), (2, 3, 1, 1))]
GRADCHECK_CASES += [
    ((2, 6, 3, 2), 3),
    ((2, 9, 4), 4),
    ((1, 5, 2, 2), 5),
    ((1, 4, 2, 2), 7),
    ((1, 3, 2, 1), 40),
]
OPCHECK_CASES = [((2, 7, 3, 4), 5), ((2, 4, 5), 4), ((1, 3, 2, 1), 40)]


def sample_inputs(device, rng, dtype=torch.float64, *, requires_grad=False, cases=None):
    """``(x, size, alpha, beta, k)`` for each ``(shape, size)`` in ``cases`` (default: every SHAPES x
    SIZES pair), on ``device``: x standard normal times 2, alpha and k drawn from [0.05, 2] and
    [0.5, 3] (alpha large enough that the window matters), beta one of the fast exponents 0.75, 0.5, 1
    or a general one."""
    cases = [(shape, size) for shape in SHAPES for size in SIZES] if cases is None else cases
    samples = []
    for shape, size in cases:
        x = torch.tensor(2.0 * rng.standard_normal(shape), dtype=dtype, device=device)
        beta = float(rng.choice([0.75, 0.5, 1.0, rng.uniform(0.3, 1.2)]))
        samples.append(
            (x.requires_grad_(requires_grad), size, rng.uniform(0.05, 2.0), beta, rng.uniform(0.5, 3.0))
        )
    return samples


def _tensor(rng, shape, dtype=torch.float64, scale=1.0, requires_grad=False, device="cpu"):
    return torch.tensor(
        scale * rng.standard_normal(shape), dtype=dtype, device=device, requires_grad=requires_grad
    )


def _forward_and_grad(fn, x, grad_y):
    x = x.detach().requires_grad_()
    y = fn(x)
    (gx,) = torch.autograd.grad(y, x, grad_y)
    return y.detach(), gx


def _reference64(x, grad_y, size, alpha, beta, k):
    """Values and gradient of torch's local_response_norm in float64 on the CPU."""
    x64, g64 = x.detach().cpu().double(), grad_y.detach().cpu().double()
    return _forward_and_grad(lambda t: lrn_reference(t, size, alpha, beta, k), x64, g64)


def _tolerances(dtype, device):
    """(values, gradients) tolerances against the float64 reference."""
    if dtype == torch.float64:
        if device == "cuda":
            return {"rtol": 1e-12, "atol": 1e-12}, {"rtol": 1e-12, "atol": 1e-12}
        return {"rtol": 1e-12, "atol": 1e-13}, {"rtol": 1e-11, "atol": 1e-12}
    return {"rtol": 2e-5, "atol": 2e-6}, {"rtol": 1e-4, "atol": 1e-5}  # two terms that can cancel


def _assert_close64(got, want, tol):
    torch.testing.assert_close(got.detach().cpu().double(), want, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("size", SIZES)
def test_forward_and_gradient_match_torch_float64(rng, device_isa, dtype, shape, size):
    ((x, size, alpha, beta, k),) = sample_inputs(device_isa, rng, dtype, cases=[(shape, size)])
    grad_y = _tensor(rng, shape, dtype, device=device_isa)
    y, gx = _forward_and_grad(lambda t: deeprank.lrn(t, size, alpha, beta, k), x, grad_y)
    assert y.dtype == gx.dtype == dtype and y.device == x.device
    y_ref, gx_ref = _reference64(x, grad_y, size, alpha, beta, k)
    tol, gtol = _tolerances(dtype, device_isa)
    _assert_close64(y, y_ref, tol)
    _assert_close64(gx, gx_ref, gtol)


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck(rng, device_isa, case):
    ((x, size, alpha, beta, k),) = sample_inputs(device_isa, rng, requires_grad=True, cases=[case])
    assert torch.autograd.gradcheck(lambda t: deeprank.lrn(t, size, alpha, beta, k), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(rng, device, dtype):
    # Schema, fake kernel, autograd registration and torch.compile consistency of both ops.
    samples = sample_inputs(device, rng, dtype, requires_grad=True, cases=OPCHECK_CASES)
    # Channels-last input: on the CPU its own kernel and a channels-last output, which the fake must predict.
    x_cl = _tensor(rng, (2, 6, 3, 5), dtype, device=device).to(memory_format=torch.channels_last)
    samples.append((x_cl.requires_grad_(), 3, 1e-2, 0.75, 2.0))
    for x, size, alpha, beta, k in samples:
        torch.library.opcheck(torch.ops.deeprank.lrn_forward.default, (x, size, alpha, beta, k))
        # No requires_grad here: lrn_backward has no derivative of its own (double backward raises).
        grad_y = torch.randn(x.shape, dtype=dtype, device=device)
        torch.library.opcheck(
            torch.ops.deeprank.lrn_backward.default, (grad_y, x.detach(), size, alpha, beta, k)
        )


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.0, 2.3])
@pytest.mark.parametrize("size", [2, 5])
def test_fast_exponents_and_general_pow(rng, device_isa, beta, size):
    # beta 0.75, 0.5 and 1 take sqrt/division paths instead of pow: each must agree with torch.
    x = _tensor(rng, (2, 11, 4, 5), scale=3.0, device=device_isa)
    grad_y = _tensor(rng, x.shape, device=device_isa)
    y, gx = _forward_and_grad(lambda t: deeprank.lrn(t, size, 0.3, beta, 1.5), x, grad_y)
    y_ref, gx_ref = _reference64(x, grad_y, size, 0.3, beta, 1.5)
    tol, gtol = _tolerances(torch.float64, device_isa)
    _assert_close64(y, y_ref, tol)
    _assert_close64(gx, gx_ref, gtol)


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.0, 2.3])
def test_alexnet_constants_in_float32(rng, device, beta):
    x = _tensor(rng, (2, 96, 7, 7), torch.float32, scale=10.0, device=device)
    grad_y = _tensor(rng, x.shape, torch.float32, device=device)
    y, gx = _forward_and_grad(lambda t: deeprank.lrn(t, 5, 1e-4, beta, 2.0), x, grad_y)
    y_ref, gx_ref = _reference64(x, grad_y, 5, 1e-4, beta, 2.0)
    _assert_close64(y, y_ref, {"rtol": 2e-5, "atol": 2e-6})
    _assert_close64(gx, gx_ref, {"rtol": 1e-4, "atol": 1e-5})


@pytest.mark.parametrize("shape", [(3, 96, 13, 13), (2, 5, 7, 3)])
def test_float32_matches_float64_reference(rng, device_isa, shape):
    x = _tensor(rng, shape, torch.float32, scale=10.0, device=device_isa)
    grad_y = _tensor(rng, shape, torch.float32, device=device_isa)
    y, gx = _forward_and_grad(lambda t: deeprank.lrn(t, 5, 1e-2, 0.75, 2.0), x, grad_y)
    assert y.dtype == gx.dtype == torch.float32
    y_ref, gx_ref = _reference64(x, grad_y, 5, 1e-2, 0.75, 2.0)
    if device_isa == "cpu":
        tol, gtol = {"rtol": 1e-6, "atol": 1e-6}, {"rtol": 1e-5, "atol": 1e-6}
    else:
        tol, gtol = _tolerances(torch.float32, device_isa)
    _assert_close64(y, y_ref, tol)
    _assert_close64(gx, gx_ref, gtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_channel_next_to_small_ones(rng, device_isa, dtype):
    # A window sum that subtracts the channel leaving the window would keep ~eps * 1e24 of the huge
    # square after it leaves, swamping the O(1) windows that follow; block prefix/suffix sums and
    # the GPU's direct window sums do not.
    huge = 1e12 if dtype == torch.float64 else 1e15
    x = torch.tensor(rng.uniform(0.5, 1.5, (2, 24, 3, 5)), dtype=dtype)
    x[:, [0, 9]] = huge
    x[1, 17, 1, 2] = -huge
    x = x.to(device_isa)
    grad_y = _tensor(rng, x.shape, dtype, device=device_isa)
    y, gx = _forward_and_grad(lambda t: deeprank.lrn(t, 3, 1.0, 0.75, 1e-3), x, grad_y)
    y_ref, gx_ref = _reference64(x, grad_y, 3, 1.0, 0.75, 1e-3)
    if dtype == torch.float64:
        rtol, atol = 1e-11, 1e-12
    else:
        rtol, atol = (2e-6, 1e-6) if device_isa == "cpu" else (2e-5, 1e-5)
    _assert_close64(y, y_ref, {"rtol": rtol, "atol": 0})
    # Gradients of O(1) can come out of cancelling O(1) terms: allow an absolute error at that scale.
    _assert_close64(gx, gx_ref, {"rtol": rtol, "atol": atol})


def test_double_backward_raises_clearly(rng, device):
    x = _tensor(rng, (1, 4, 2, 2), requires_grad=True, device=device)
    (gx,) = torch.autograd.grad(deeprank.lrn(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        gx.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nan_and_inf_stay_in_their_windows(rng, device_isa, dtype):
    x = _tensor(rng, (1, 12, 3, 4), dtype, device=device_isa)
    x[0, 6, 1, 1] = float("nan")
    x[0, 2, 0, 3] = float("inf")
    y = deeprank.lrn(x, 5, 1e-2, 0.75, 2.0).cpu()
    y_ref = lrn_reference(x.cpu().double(), 5, 1e-2, 0.75, 2.0)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref))
    assert torch.isnan(y[0, 4:9, 1, 1]).all()  # every output whose window holds the NaN
    tol, _ = _tolerances(dtype, device_isa)
    torch.testing.assert_close(y.double(), y_ref, **tol, equal_nan=True)


def test_other_strided_inputs(rng, device):
    x = _tensor(rng, (2, 6, 5, 8), device=device)[..., ::2]  # neither contiguous nor channels-last
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    tol, _ = _tolerances(torch.float64, device)
    torch.testing.assert_close(deeprank.lrn(x, 3), lrn_reference(x, 3, 1e-4, 0.75, 2.0), **tol)


def test_empty_input(device):
    x = torch.zeros(0, 4, 3, 3, device=device, requires_grad=True)
    y = deeprank.lrn(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_defaults_are_alexnets(device):
    x = torch.rand(1, 8, 2, 2, dtype=torch.float64, device=device) * 50
    torch.testing.assert_close(deeprank.lrn(x), F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=2.0))


# --- CUDA only ------------------------------------------------------------------------------------------


class _CudaLrn(torch.autograd.Function):
    """The CUDA kernels alone under autograd (independent of the dispatcher in deeprank.ops.lrn)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        ctx.save_for_backward(x)
        ctx.args = (size, alpha, beta, k)
        return cuda_ops.lrn_forward(x, size, alpha, beta, k)

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        return cuda_ops.lrn_backward(grad_y.contiguous(), x, *ctx.args), None, None, None, None


@pytest.mark.cuda
def test_cuda_kernels_gradcheck_without_the_dispatcher(rng):
    for x, size, alpha, beta, k in sample_inputs("cuda", rng, requires_grad=True, cases=GRADCHECK_CASES):
        assert torch.autograd.gradcheck(
            lambda t, s=size, a=alpha, b=beta, c=k: _CudaLrn.apply(t, s, a, b, c), (x,)
        )


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu_and_torch(rng, dtype):
    for x, size, alpha, beta, k in sample_inputs(
        "cuda", rng, dtype, cases=[(s, z) for s in SHAPES for z in (4, 5)]
    ):
        tol, gtol = _tolerances(dtype, "cuda")
        y = deeprank.lrn(x, size, alpha, beta, k)
        torch.testing.assert_close(y.cpu(), deeprank.lrn(x.cpu(), size, alpha, beta, k), **tol)
        torch.testing.assert_close(y, F.local_response_norm(x, size, alpha=alpha, beta=beta, k=k), **tol)
        gy = torch.randn_like(x)
        torch.testing.assert_close(
            torch.ops.deeprank.lrn_backward(gy, x, size, alpha, beta, k).cpu(),
            torch.ops.deeprank.lrn_backward(gy.cpu(), x.cpu(), size, alpha, beta, k),
            **gtol,
        )


@pytest.mark.cuda
def test_cuda_windows_beyond_lrn_max_size_fall_back_to_torch(rng):
    size = cuda_module().lrn_max_size + 1
    x = _tensor(rng, (2, size + 3, 4, 5), device="cuda")
    grad_y = _tensor(rng, x.shape, device="cuda")
    y = cuda_ops.lrn_forward(x, size, 0.5, 0.75, 1.0)
    gx = cuda_ops.lrn_backward(grad_y, x, size, 0.5, 0.75, 1.0)
    y_ref, gx_ref = _reference64(x, grad_y, size, 0.5, 0.75, 1.0)
    _assert_close64(y, y_ref, {"rtol": 1e-12, "atol": 1e-12})
    _assert_close64(gx, gx_ref, {"rtol": 1e-12, "atol": 1e-12})


# --- CPU only: channels-last kernels, threads, the binding boundary ------------------------------------

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
    # The binding's precondition guards, reached only by calling _C directly.
    x = np.zeros((1, 4, 3), np.float32)
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        _C.lrn_forward(x.astype(np.int64), 3, 1e-4, 0.75, 2.0, x.copy())
    with pytest.raises(ValueError, match="y must be a 3-D float32 array"):
        _C.lrn_forward(x, 3, 1e-4, 0.75, 2.0, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        _C.lrn_forward(x, 0, 1e-4, 0.75, 2.0, x.copy())
    with pytest.raises(ValueError, match="grad_y must have the shape of x"):
        _C.lrn_backward(np.zeros((1, 4, 2), np.float32), x, 3, 1e-4, 0.75, 2.0, x.copy())


def test_cuda_entry_point_rejects_cpu_tensors():
    with pytest.raises(ValueError, match="x must be on a CUDA device"):
        cuda_ops.lrn_forward(torch.zeros(2, 3, 4), 5, 1e-4, 0.75, 2.0)
