"""ImageStore: decoded images cached up to a budget; unreadable files flagged."""

import numpy as np
import pytest
import torch
from hostile_files import UPRIGHT, blocks, eight_bit, exif_jpeg, gradient16, png16, png_header, stored_pixels
from imagefiles import write_image

from deeprank.data import ImageStore, ImageTooLarge, UnreadableImage


def test_image_store_caches_and_flags_bad_files(tmp_path):
    good = write_image(tmp_path / "g.png")
    bad = tmp_path / "b.png"
    bad.write_bytes(b"nope")
    store = ImageStore([good, bad], 8, 3, max_bytes=10_000)
    first = store.get(0)
    assert first.dtype == torch.uint8 and store.get(0) is first
    with pytest.raises(UnreadableImage):
        store.get(1)
    assert store.bad == {1}


def test_training_images_go_through_the_guarded_decode(tmp_path):
    # What training reads: a 16-bit PNG as its 8-bit gradient, an EXIF-rotated JPEG upright, a bomb flagged.
    values = gradient16(256, 256)
    (tmp_path / "sixteen.png").write_bytes(png16(values))
    (tmp_path / "bomb.png").write_bytes(png_header(30000, 30000))
    rotated = exif_jpeg(blocks(32, 48), 6)
    (tmp_path / "turned.jpg").write_bytes(rotated)
    store = ImageStore([tmp_path / n for n in ("sixteen.png", "bomb.png", "turned.jpg")], 256, 1)
    np.testing.assert_array_equal(store.get(0)[0].numpy(), eight_bit(values))
    with pytest.raises(ImageTooLarge):
        store.get(1)
    assert store.bad == {1}
    assert store.pil(2).size == (32, 48)  # upright: 32 wide, 48 high
    np.testing.assert_array_equal(np.asarray(store.pil(2)), UPRIGHT[6](stored_pixels(rotated)))
