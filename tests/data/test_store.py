"""ImageStore: decoded images cached up to a budget; unreadable files flagged."""

import numpy as np
import pytest
import torch
from hostile_files import UPRIGHT, blocks, eight_bit, exif_jpeg, gradient16, png16, png_header, stored_pixels
from imagefiles import write_image

from deeprank.data import ImageStore, ImageTooLarge, UnreadableImage, image_tensor


def test_image_store_caches_and_flags_bad_files(tmp_path):
    good = write_image(tmp_path / "g.png")
    bad = tmp_path / "b.png"
    bad.write_bytes(b"nope")
    store = ImageStore([good, bad], 8, 3, max_bytes=10_000)
    first = store.get(0)
    assert first.dtype == torch.uint8 and torch.equal(store.get(0), first)
    assert store.decoded == 1 and store.cached == 1  # the second get came from memory
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


def test_the_store_keeps_at_most_its_budget_in_one_block_and_evicts_the_oldest(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", color=(40 * i, 255 - 40 * i, 9)) for i in range(5)]
    expected = [image_tensor(p, 8, 3) for p in paths]
    store = ImageStore(paths, 8, 3, max_bytes=3 * 3 * 8 * 8 + 10)  # room for 3 images
    assert store.max_items == 3 and store.reserved_bytes == 3 * 192
    for i in (0, 1, 2, 0, 3):  # 0 is used again, so 1 is the oldest when 3 comes
        got = store.get(i)
        got.fill_(7)  # a copy: changing it leaves the store alone
    assert store.cached == 3 and store.decoded == 4
    for i in (0, 2, 3):
        assert torch.equal(store.get(i), expected[i])
    assert store.decoded == 4  # all three still in memory
    assert torch.equal(store.get(1), expected[1]) and store.decoded == 5  # 1 was evicted
    big = ImageStore(paths, 8, 3)  # the default budget: never more than the images themselves
    assert big.reserved_bytes == 5 * 192
