"""deeprank.ops._cpu: the reuse of large CPU kernel outputs."""

from __future__ import annotations

import torch

import deeprank
from deeprank.ops._cpu import _OutputBuffers
from deeprank.ops.reference import triplet_loss_reference


def test_output_buffers_are_reused_only_once_released():
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
