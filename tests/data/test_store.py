"""ImageStore: decoded images cached up to a budget; unreadable files flagged."""

import pytest
import torch
from imagefiles import write_image

from deeprank.data import ImageStore, UnreadableImage


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
