import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

# torch first: the process then holds torch's OpenMP runtime before our threads start, as in real use.
import torch  # noqa: F401

import deeprank

# Subprocesses started by tests (`python -m deeprank ...`) must import the same deeprank as this
# process: the installed one in CI, not the source tree (no compiled module) that the working
# directory would put first on sys.path.
_package_parent = str(Path(deeprank.__file__).resolve().parent.parent)
os.environ["PYTHONSAFEPATH"] = "1"
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_package_parent, os.environ.get("PYTHONPATH")) if p)


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
