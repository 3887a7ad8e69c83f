"""Hand-crafted features: shapes, known values, distances against float64 references."""

import numpy as np
import pytest
import torch

from deeprank.features import (
    DISTANCES,
    _haar_2d,
    _rgb_to_lab,
    color_distance,
    color_histogram,
    hog,
    hog_distance,
    wavelet,
    wavelet_distance,
)


def test_lab_conversion_known_colours():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).view(3, 3, 1, 1)
    lab = _rgb_to_lab(rgb)[:, :, 0, 0]
    torch.testing.assert_close(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(lab[1], torch.tensor([0.0, 0.0, 0.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.1, rtol=0)  # sRGB red


def test_color_histogram_bins_and_inputs(rng):
    images = rng.integers(0, 256, (4, 10, 12, 3), dtype=np.uint8)
    h = color_histogram(images)
    assert h.shape == (4, 4096) and h.dtype == np.float32
    np.testing.assert_allclose(h.sum(axis=1), 1.0, rtol=1e-6)
    # a uniform image falls in exactly one bin; white is L=100 -> last L bin, a=b=0 -> middle bins
    white = color_histogram(np.full((1, 5, 5, 3), 255, np.uint8))[0]
    assert np.count_nonzero(white) == 1 and int(np.argmax(white)) == (15 * 16 + 8) * 16 + 8
    # torch float [N, C, H, W] input gives the same as uint8 numpy
    as_torch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_allclose(color_histogram(as_torch), h, atol=1e-6)
    gray = color_histogram(rng.integers(0, 256, (2, 8, 8), dtype=np.uint8))
    assert gray.shape == (2, 4096)


def test_color_distance_is_normalised_l1(rng):
    a = color_histogram(rng.integers(0, 256, (3, 6, 6, 3), dtype=np.uint8))
    b = color_histogram(rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8))
    d = color_distance(a, b)
    ref = np.abs(a[:, None, :].astype(np.float64) - b[None, :, :]).sum(-1) / 2
    np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-6)
    assert (d >= 0).all() and (d <= 1 + 1e-6).all()
    np.testing.assert_allclose(color_distance(a, a[[1, 2, 0]], paired=True), ref_paired(a), rtol=1e-5)


def ref_paired(a):
    b = a[[1, 2, 0]].astype(np.float64)
    return np.abs(a - b).sum(-1) / 2


def test_hog_shape_invariance_and_orientation():
    assert hog(np.zeros((2, 28, 28), np.uint8)).shape == (2, 36 * 32)
    flat = hog(np.full((1, 40, 40), 128, np.uint8))
    np.testing.assert_allclose(flat, 0.0, atol=1e-6)  # no gradient, no HOG
    # vertical stripes (horizontal gradients) and horizontal stripes differ; contrast inversion keeps
    # the contrast-insensitive part
    x = np.tile((np.arange(96) // 8 % 2 * 255).astype(np.uint8), (96, 1))
    vertical, horizontal, inverted = hog(np.stack([x, x.T, 255 - x]))
    assert np.abs(vertical - horizontal).sum() > 1.0
    v = vertical.reshape(36, 32)
    inv = inverted.reshape(36, 32)
    np.testing.assert_allclose(v[:, 18:27], inv[:, 18:27], atol=1e-4)
    assert np.abs(v[:, :18] - inv[:, :18]).sum() > 1.0
    d = hog_distance(np.stack([vertical, horizontal]), np.stack([vertical]))[:, 0]
    np.testing.assert_allclose(d, [0.0, np.abs(vertical - horizontal).astype(np.float64).sum()], rtol=1e-4)


def test_haar_is_orthonormal_and_matches_a_loop_reference(rng):
    x = torch.from_numpy(rng.standard_normal((2, 1, 8, 8))).double()
    c = _haar_2d(x)
    torch.testing.assert_close((c**2).sum(), (x**2).sum())  # orthonormal: energy kept
    torch.testing.assert_close(c[..., 0, 0], x.sum(dim=(-1, -2)) / 8)  # DC = sum / sqrt(64)

    def haar_1d(v):
        v = v.copy()
        n = len(v)
        while n > 1:
            a, b = v[0:n:2].copy(), v[1:n:2].copy()
            v[: n // 2], v[n // 2 : n] = (a + b) / np.sqrt(2), (a - b) / np.sqrt(2)
            n //= 2
        return v

    m = x[0, 0].numpy()
    rows = np.stack([haar_1d(r) for r in m])
    ref = np.stack([haar_1d(col) for col in rows.T]).T
    np.testing.assert_allclose(c[0, 0].numpy(), ref, atol=1e-12)


def test_wavelet_signature_and_weighted_l0(rng):
    images = rng.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    w = wavelet(images, size=16, keep=10)
    assert w.shape == (3, 3 * 256) and w.dtype == np.float32
    # per channel: the average plus exactly `keep` nonzero signs
    per_channel = (w.reshape(3, 3, 256)[:, :, 1:] != 0).sum(-1)
    assert (per_channel == 10).all()
    d = wavelet_distance(w, w)
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-6)
    assert (d[~np.eye(3, dtype=bool)] > 0).all()
    np.testing.assert_allclose(d, d.T, rtol=1e-5)
    np.testing.assert_allclose(
        wavelet_distance(w, w[[2, 0, 1]], paired=True), d[[0, 1, 2], [2, 0, 1]], rtol=1e-5
    )
    with pytest.raises(ValueError, match="power of two"):
        wavelet(images, size=20)


def test_features_rank_same_class_closer_on_fashion_mnist():
    from deeprank.data import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    images, labels = images[:400], labels[:400]
    for name, fn in (("hog", hog), ("wavelet", wavelet), ("color", color_histogram)):
        feats = fn(images)
        d = DISTANCES[name](feats, feats)
        np.fill_diagonal(d, np.inf)
        nearest = d.argmin(axis=1)
        accuracy = (labels[nearest] == labels).mean()
        assert accuracy > (0.6 if name != "color" else 0.2), (name, accuracy)  # chance is 0.1
