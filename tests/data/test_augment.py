"""Augmentations: pixel shifts, instance views, crops."""

import random

import numpy as np
import torch
from PIL import Image

from deeprank.data import augmented_view, random_crops, random_shift


def test_random_shift_moves_content_and_repeats_under_seed():
    x = torch.zeros(64, 1, 9, 9, dtype=torch.uint8)
    x[:, :, 4, 4] = 255
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    again = random_shift(x, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)
    # every image keeps its single bright pixel, moved by at most 2 in each direction
    positions = set()
    for img in out[:, 0]:
        ys, xs = torch.nonzero(img == 255, as_tuple=True)
        assert len(ys) == 1 and abs(int(ys[0]) - 4) <= 2 and abs(int(xs[0]) - 4) <= 2
        positions.add((int(ys[0]), int(xs[0])))
    assert len(positions) > 10  # offsets differ per image
    assert random_shift(x, 0) is x
    floats = random_shift(x.float() / 255, 1, torch.Generator().manual_seed(1))
    assert floats.dtype == torch.float32


def test_random_shift_matches_a_loop_reference():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(5, 3, 7, 6)
    out = random_shift(x, 2, gen)
    offsets = torch.randint(0, 5, (2, 5), generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(5):
        oy, ox = int(offsets[0, i]), int(offsets[1, i])
        torch.testing.assert_close(out[i], padded[i, :, oy : oy + 7, ox : ox + 6])


def test_augmented_view_is_a_changed_crop(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8))
    a = augmented_view(image, 32, 3, random.Random(1))
    b = augmented_view(image, 32, 3, random.Random(1))
    c = augmented_view(image, 32, 3, random.Random(2))
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_random_crops_are_sub_images():
    img = torch.arange(16.0).view(1, 1, 4, 4).repeat(5, 1, 1, 1) / 16
    full = random_crops(img, scale=(1.0, 1.0))
    assert torch.allclose(full, img, atol=1e-6)
    crops = random_crops(img, scale=(0.25, 0.25), seed=1)
    assert crops.shape == img.shape and not torch.allclose(crops, img)


def test_random_crops_keep_uint8_pixels_in_range():
    img = torch.randint(0, 256, (4, 3, 12, 10), dtype=torch.uint8)
    crops = random_crops(img, seed=2)
    assert crops.dtype == torch.uint8 and crops.shape == img.shape
    torch.testing.assert_close(random_crops(img, scale=(1.0, 1.0)), img, rtol=0, atol=0)
