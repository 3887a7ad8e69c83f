"""The torch.library registration of deeprank's ops: schemas, opcheck, fake kernels, torch.compile, CUDA."""

from __future__ import annotations

import time

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import deeprank
from deeprank.ops.reference import lrn_reference, triplet_loss_reference

OPS = ("triplet_forward", "triplet_backward", "lrn_forward", "lrn_backward")
SCHEMAS = {
    "triplet_forward": "deeprank::triplet_forward(Tensor q, Tensor p, Tensor n, float margin) -> Tensor",
    "triplet_backward": (
        "deeprank::triplet_backward(Tensor grad_losses, Tensor q, Tensor p, Tensor n, float margin)"
        " -> (Tensor, Tensor, Tensor)"
    ),
    "lrn_forward": "deeprank::lrn_forward(Tensor x, SymInt size, float alpha, float beta, float k) -> Tensor",
    "lrn_backward": (
        "deeprank::lrn_backward(Tensor grad_y, Tensor x, SymInt size, float alpha, float beta, float k)"
        " -> Tensor"
    ),
}


@pytest.mark.parametrize("name", OPS)
def test_schema(name):
    assert str(getattr(torch.ops.deeprank, name).default._schema) == SCHEMAS[name]


@pytest.mark.parametrize("name", OPS)
def test_cpu_cuda_and_fake_kernels_are_registered(name):
    qualname = f"deeprank::{name}"
    for key in ("CPU", "CUDA", "Meta", "Autograd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key), key


def _triplet_samples(dtype):
    g = torch.Generator().manual_seed(0)
    q, p, n = (torch.randn(6, 5, dtype=dtype, generator=g, requires_grad=True) for _ in range(3))
    return q, p, n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    q, p, n = _triplet_samples(dtype)
    grad = torch.rand(6, dtype=dtype)
    x = torch.randn(2, 7, 3, 4, dtype=dtype, requires_grad=True)
    x3 = torch.randn(2, 4, 5, dtype=dtype, requires_grad=True)
    # Channels-last CPU input: its own kernel and a channels-last output, which the fake must predict.
    x_cl = torch.randn(2, 6, 3, 5, dtype=dtype).to(memory_format=torch.channels_last).requires_grad_()
    cases = [
        (torch.ops.deeprank.triplet_forward.default, (q, p, n, 2.0)),
        (torch.ops.deeprank.triplet_backward.default, (grad, q, p, n, 2.0)),
        (torch.ops.deeprank.lrn_forward.default, (x, 5, 1e-2, 0.75, 2.0)),
        (torch.ops.deeprank.lrn_forward.default, (x3, 4, 1e-2, 0.5, 1.0)),
        # No requires_grad here: lrn_backward has no derivative of its own (double backward raises).
        (torch.ops.deeprank.lrn_backward.default, (torch.randn_like(x), x.detach(), 5, 1e-2, 0.75, 2.0)),
        (torch.ops.deeprank.lrn_forward.default, (x_cl, 3, 1e-2, 0.75, 2.0)),
        (
            torch.ops.deeprank.lrn_backward.default,
            (torch.randn(x_cl.shape, dtype=dtype), x_cl.detach(), 3, 1e-2, 0.75, 2.0),
        ),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_fake_kernels_give_shapes_without_computing():
    with FakeTensorMode():
        q = torch.empty(10, 7)
        assert torch.ops.deeprank.triplet_forward(q, q, q, 1.0).shape == (10,)
        dq, dp, dn = torch.ops.deeprank.triplet_backward(torch.empty(10), q, q, q, 1.0)
        assert dq.shape == dp.shape == dn.shape == (10, 7)
        x = torch.empty(2, 3, 5, 5, dtype=torch.float64)
        y = torch.ops.deeprank.lrn_forward(x, 5, 1e-4, 0.75, 2.0)
        assert y.shape == x.shape and y.dtype == torch.float64
        assert torch.ops.deeprank.lrn_backward(y, x, 5, 1e-4, 0.75, 2.0).shape == x.shape
        x_cl = x.to(memory_format=torch.channels_last)
        y_cl = torch.ops.deeprank.lrn_forward(x_cl, 5, 1e-4, 0.75, 2.0)
        assert y_cl.stride() == x_cl.stride()
        assert torch.ops.deeprank.lrn_backward(y, x_cl, 5, 1e-4, 0.75, 2.0).stride() == x_cl.stride()


def test_meta_tensors_propagate_shapes():
    x = torch.empty(2, 3, 4, device="meta")
    assert deeprank.lrn(x).shape == x.shape
    q = torch.empty(4, 8, device="meta")
    assert deeprank.triplet_loss(q, q, q, reduction="none").shape == (4,)


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()

    def step(x, q, p, n):
        return deeprank.lrn(x, 5, 1e-2, 0.75, 2.0).sum() + deeprank.triplet_loss(q, p, n, 1.5)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 3, 3, generator=g, requires_grad=True)
    q, p, n = (torch.randn(8, 4, generator=g, requires_grad=True) for _ in range(3))
    start = time.perf_counter()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(x, q, p, n)
    got_grads = torch.autograd.grad(got, (x, q, p, n))
    elapsed = time.perf_counter() - start
    want = lrn_reference(x, 5, 1e-2, 0.75, 2.0).sum() + triplet_loss_reference(q, p, n, 1.5)
    want_grads = torch.autograd.grad(want, (x, q, p, n))
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)
    assert elapsed < 60, f"torch.compile took {elapsed:.0f} s"


@pytest.mark.slow  # inductor's first C++ compile takes ~45 s on a 2-core machine
def test_torch_compile_inductor_loss():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(3)
    q, p, n = (torch.randn(16, 9, generator=g, requires_grad=True) for _ in range(3))
    compiled = torch.compile(lambda a, b, c: 2 * deeprank.triplet_loss(a, b, c, 3.0), fullgraph=True)
    got = compiled(q, p, n)
    got_grads = torch.autograd.grad(got, (q, p, n))
    want = 2 * triplet_loss_reference(q, p, n, 3.0)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, torch.autograd.grad(want, (q, p, n)), strict=True):
        torch.testing.assert_close(a, b)


def _cuda_usable() -> bool:
    return torch.cuda.is_available() and deeprank.build_info()["cuda_compiled"]


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_usable(), reason="needs a CUDA build of torch, deeprank._cuda and a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_ops_match_cpu(dtype):
    g = torch.Generator().manual_seed(2)
    q, p, n = (torch.randn(33, 257, dtype=dtype, generator=g) for _ in range(3))
    x = torch.randn(3, 10, 7, 9, dtype=dtype, generator=g)
    for reduction in ("none", "sum"):
        want = deeprank.triplet_loss(q, p, n, 20.0, reduction)
        got = deeprank.triplet_loss(q.cuda(), p.cuda(), n.cuda(), 20.0, reduction)
        torch.testing.assert_close(got.cpu(), want)
    grad = torch.rand(33, dtype=dtype, generator=g)
    for a, b in zip(
        torch.ops.deeprank.triplet_backward(grad.cuda(), q.cuda(), p.cuda(), n.cuda(), 20.0),
        torch.ops.deeprank.triplet_backward(grad, q, p, n, 20.0),
        strict=True,
    ):
        torch.testing.assert_close(a.cpu(), b)
    for size in (4, 5):
        torch.testing.assert_close(deeprank.lrn(x.cuda(), size).cpu(), deeprank.lrn(x, size))
        gy = torch.randn_like(x)
        torch.testing.assert_close(
            torch.ops.deeprank.lrn_backward(gy.cuda(), x.cuda(), size, 1e-4, 0.75, 2.0).cpu(),
            torch.ops.deeprank.lrn_backward(gy, x, size, 1e-4, 0.75, 2.0),
        )


def test_output_buffers_are_reused_only_once_released():
    from deeprank.ops._cpu import _OutputBuffers

    cache = _OutputBuffers(64 << 20)
    a = cache.empty((512, 1024), torch.float32)  # 2 MiB
    b = cache.empty((512, 1024), torch.float32)
    assert a.data_ptr() != b.data_ptr()
    view = a[3:]
    ptr = a.data_ptr()
    del a
    c = cache.empty((512, 1024), torch.float32)
    assert c.data_ptr() not in (ptr, b.data_ptr())  # a view of the first buffer is still alive
    del view
    d = cache.empty((1024, 512), torch.float32)
    assert d.data_ptr() == ptr and d.shape == (1024, 512) and d.is_contiguous()
    assert cache.empty((512, 1024), torch.float64).data_ptr() not in (ptr, b.data_ptr(), c.data_ptr())
    small = cache.empty((4, 4), torch.float64)  # below the threshold: plain torch allocation
    assert small.dtype == torch.float64 and small.shape == (4, 4)


def test_output_buffers_respect_the_cap():
    from deeprank.ops._cpu import _OutputBuffers

    cache = _OutputBuffers(3 << 20)
    a = cache.empty((1024, 1024), torch.float32)  # 4 MiB: over the cap, so not kept
    assert a.shape == (1024, 1024) and cache._bytes == 0 and cache._buffers == []
    b = cache.empty((512, 1024), torch.float32)  # 2 MiB: kept
    assert cache._bytes == 2 << 20 and len(cache._buffers) == 1
    assert b.data_ptr() == cache._buffers[0][0].ctypes.data


def test_gradients_from_reused_buffers_stay_correct():
    g = torch.Generator().manual_seed(4)
    q, p, n = (torch.randn(512, 1024, generator=g, requires_grad=True) for _ in range(3))
    first = None
    for _ in range(3):
        for t in (q, p, n):
            t.grad = None
        deeprank.triplet_loss(q, p, n, 2.0, "sum").backward()
        grads = [t.grad.clone() for t in (q, p, n)]
        assert len({t.grad.data_ptr() for t in (q, p, n)}) == 3  # three outputs never share memory
        first = first or grads
        for a, b in zip(grads, first, strict=True):
            assert torch.equal(a, b)
    want = torch.autograd.grad(triplet_loss_reference(q, p, n, 2.0, "sum"), (q, p, n))
    for a, b in zip(first, want, strict=True):
        torch.testing.assert_close(a, b)
