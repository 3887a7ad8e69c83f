import importlib.util

import numpy as np
import pytest

# torch first: the process then holds torch's OpenMP runtime before our threads start, as in real use.
import torch  # noqa: F401

import deeprank


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the test's name and printed on failure."""
    seed = np.random.SeedSequence().entropy % (2**32)
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


def pytest_report_header(config):
    return f"deeprank build: {deeprank.build_info()}"


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
