"""deeprank.nn: LocalResponseNorm and TripletRankingLoss, on the CPU and CUDA."""

from __future__ import annotations

import pytest
import torch

from deeprank._build import cuda_device_count
from deeprank.nn import LocalResponseNorm, TripletRankingLoss
from deeprank.ops.reference import triplet_loss_reference

_GPU = torch.cuda.is_available() and cuda_device_count() > 0
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not _GPU, reason="needs an NVIDIA GPU and deeprank._cuda"),
        ],
    ),
]


def _tensor(rng, shape, device, dtype=torch.float64, scale=1.0):
    return torch.tensor(scale * rng.standard_normal(shape), dtype=dtype, device=device)


def _forward_and_grad(module, x, grad_y):
    x = x.detach().requires_grad_()
    y = module(x)
    (gx,) = torch.autograd.grad(y, x, grad_y)
    return y.detach(), gx


# --- LocalResponseNorm ----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("args, kwargs", [((5,), {}), ((4,), {"alpha": 1e-2, "beta": 0.5, "k": 2.0})])
def test_lrn_module_is_a_drop_in_for_torchs(rng, device, args, kwargs):
    ours, theirs = LocalResponseNorm(*args, **kwargs), torch.nn.LocalResponseNorm(*args, **kwargs)
    assert repr(ours) == repr(theirs)
    assert (ours.size, ours.alpha, ours.beta, ours.k) == (theirs.size, theirs.alpha, theirs.beta, theirs.k)
    x = _tensor(rng, (2, 9, 4, 4), device, scale=20.0)
    grad_y = _tensor(rng, x.shape, device)
    y, gx = _forward_and_grad(ours, x, grad_y)
    y_ref, gx_ref = _forward_and_grad(theirs, x, grad_y)
    assert y.device == x.device
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_lrn_module_matches_torch_on_an_alexnet_layer(rng, device):
    x = _tensor(rng, (4, 96, 11, 11), device, torch.float32)
    ours = LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x)
    theirs = torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x)
    assert ours.device == x.device
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=2e-6)


def test_lrn_module_rejects_bad_size():
    with pytest.raises(ValueError, match="size must be >= 1"):
        LocalResponseNorm(0)
    with pytest.raises(TypeError, match="size must be an int"):
        LocalResponseNorm(2.5)


# --- TripletRankingLoss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_triplet_module_accepts_stacked_batch(rng, device):
    q, p, n = (_tensor(rng, (6, 10), device) for _ in range(3))
    loss = TripletRankingLoss(margin=20.0, reduction="sum")
    torch.testing.assert_close(loss(torch.cat([q, p, n])), loss(q, p, n), rtol=0, atol=0)
    torch.testing.assert_close(loss(q, p, n), triplet_loss_reference(q, p, n, 20.0, "sum"))


def test_triplet_module_rejects_bad_stacked_shape():
    loss = TripletRankingLoss()
    with pytest.raises(ValueError, match="\\[3B, D\\]"):
        loss(torch.zeros(7, 4))
    with pytest.raises(ValueError, match="\\[3B, D\\]"):
        loss(torch.zeros(6))
    with pytest.raises(ValueError, match="all of q, p, n"):
        loss(torch.zeros(3, 4), torch.zeros(3, 4))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"margin": float("nan")}, ValueError, "margin must be finite"),
        ({"margin": "1"}, TypeError, "margin must be a real number"),
        ({"reduction": "max"}, ValueError, "reduction must be"),
    ],
)
def test_triplet_module_rejects_bad_margin_and_reduction(kwargs, error, match):
    with pytest.raises(error, match=match):
        TripletRankingLoss(**kwargs)


def test_triplet_module_repr():
    assert repr(TripletRankingLoss(0.5, "sum")) == "TripletRankingLoss(margin=0.5, reduction='sum')"
