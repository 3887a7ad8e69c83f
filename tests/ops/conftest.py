"""Devices and SIMD variants the op tests run on.

``device``: "cpu", then "cuda". ``device_isa``: the same, with the CPU run once per SIMD variant this
machine supports (forced for the test and restored after, so ``DEEPRANK_ISA`` still decides for every
other test). Tests and parameters marked ``cuda`` skip here unless torch sees a GPU and deeprank._cuda
imports and sees one too.
"""

from __future__ import annotations

import pytest
import torch

from deeprank import _C
from deeprank._build import cuda_device_count, cuda_module

_GPU = torch.cuda.is_available() and cuda_module() is not None and cuda_device_count() > 0
_CUDA = pytest.param("cuda", marks=pytest.mark.cuda)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is not None and not _GPU:
        pytest.skip("needs an NVIDIA GPU, torch with CUDA and deeprank._cuda")


@pytest.fixture(params=["cpu", _CUDA])
def device(request) -> str:
    return request.param


@pytest.fixture(params=[*(f"cpu-{isa}" for isa in _C.available_isas()), _CUDA])
def device_isa(request) -> str:
    """ "cpu" (with the SIMD variant of the parameter forced) or "cuda"."""
    if request.param == "cuda":
        yield "cuda"
        return
    before = _C.active_isa()
    _C.set_isa(request.param.removeprefix("cpu-"))
    try:
        yield "cpu"
    finally:
        _C.set_isa(before)


@pytest.fixture(params=_C.available_isas())
def isa(request) -> str:
    """A CPU-only test once per SIMD variant (restored after)."""
    before = _C.active_isa()
    _C.set_isa(request.param)
    try:
        yield request.param
    finally:
        _C.set_isa(before)
