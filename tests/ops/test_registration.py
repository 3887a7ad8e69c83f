"""The torch.library registration of deeprank's ops: schemas, kernels per dispatch key, fake kernels,
meta tensors and torch.compile. opcheck runs per op on the CPU and CUDA, fed by each op's sample_inputs
(test_triplet.py, test_lrn.py)."""

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
