"""Shared pieces of the training tests: a small step-budgeted configuration and a tiny image folder."""

import numpy as np
import pytest
from PIL import Image

from deeprank.training import TrainConfig


@pytest.fixture
def small(tmp_path):
    """``small(name, **settings)``: a 3-step CPU run of batch 8 into ``tmp_path / name``."""

    def make(name="run", **kw):
        base = dict(
            output=str(tmp_path / name),
            batch_size=8,
            max_steps=3,
            device="cpu",
            checkpoint_every=0,
            warmup_steps=2,
        )
        base.update(kw)
        return TrainConfig(**base)

    return make


@pytest.fixture
def image_folder(tmp_path):
    """``image_folder(corrupt=True)``: three tinted categories of six 20x24 PNGs (plus a broken file)."""

    def make(corrupt=True):
        rng = np.random.default_rng(0)
        root = tmp_path / "f"
        for c, tint in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
            (root / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(6):
                pixels = np.asarray(tint) * 0.7 + rng.integers(0, 60, (20, 24, 3))
                Image.fromarray(pixels.astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
        if corrupt:
            (root / "c0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        return root

    return make
