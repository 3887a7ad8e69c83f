"""The pretrained trunk's training modes and the frozen trunk's feature cache, through real training steps.

The trunk is built with random weights (``trunk_weights="random"``): what is tested is which parameters
and statistics change and that cached features equal fresh ones, not ImageNet's weights (those are
tested in test_efficientnet_lite.py), so these tests need no extra.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from deeprank.models import MultiScaleNet
from deeprank.models.trunk_cache import TrunkFeatureCache, configure_trunk, shift_views, view_offsets
from deeprank.training import TrainConfig
from deeprank.training.loop import Trainer

SIZE = 64


@pytest.fixture
def folder(tmp_path):
    """Two categories of five 72x80 noisy RGB images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c, tint in enumerate([(200, 40, 40), (40, 40, 200)]):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(5):
            pixels = np.asarray(tint) * 0.6 + rng.integers(0, 100, (72, 80, 3))
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


def _config(tmp_path, folder, **kw):
    base = dict(
        data=str(folder),
        output=str(tmp_path / "run"),
        preset="lite0",
        image_size=SIZE,
        batch_size=4,
        max_steps=3,
        device="cpu",
        checkpoint_every=0,
        warmup_steps=1,
        lr=0.5,  # large, so any parameter that trains visibly moves in three steps
        model_options={"trunk_weights": "random"},
    )
    base.update(kw)
    return TrainConfig(**base)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    after = module.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def _run(trainer, steps=3):
    for _ in range(steps):
        trainer.step(trainer.config.lr)


def test_frozen_trunk_stays_fixed_and_its_features_come_from_the_cache(tmp_path, folder):
    trainer = Trainer(_config(tmp_path, folder, trunk_views=2))
    model, cache = trainer.model, trainer.trunk_cache
    assert isinstance(cache, TrunkFeatureCache) and model.trunk_cache is cache
    assert not any(p.requires_grad for p in model.convnet.parameters())
    trunk_before, rest_before = _snapshot(model.convnet), _snapshot(model.embedding)
    shallow_before = _snapshot(model.shallow)
    _run(trainer, 6)
    assert _changed(trunk_before, model.convnet) == set()  # weights and BN statistics alike
    assert _changed(rest_before, model.embedding) and _changed(shallow_before, model.shallow)
    # 10 images x at most 2 views: at most 20 distinct inputs for 6 steps x 12 images.
    assert cache.computed <= 20 and cache.hits == 6 * 12 - cache.computed and cache.hits > 0
    assert len(cache) == cache.computed and cache.nbytes == cache.computed * 1280 * 4


def test_cached_and_uncached_forward_agree(tmp_path, folder):
    trainer = Trainer(_config(tmp_path, folder))
    model = trainer.model
    _run(trainer, 2)  # fills the cache
    x = torch.rand(5, 3, SIZE, SIZE)
    batch = trainer.source.next_batch(2).images.float() / 255
    x = torch.cat([x, batch])
    with torch.no_grad():
        cached_first = model(x)  # new rows computed, the batch's rows possibly hit
        cached = model(x)  # every row a hit now
        model.trunk_cache = None
        fresh = model(x)
    assert trainer.trunk_cache.hits >= len(x)
    torch.testing.assert_close(cached, fresh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached_first, fresh, rtol=1e-5, atol=1e-6)


def test_last_blocks_mode_trains_only_the_last_blocks_and_keeps_bn_statistics(tmp_path, folder):
    trainer = Trainer(_config(tmp_path, folder, trunk_mode="last-blocks", trunk_blocks=3))
    assert trainer.trunk_cache is None
    trunk = trainer.model.convnet
    before = _snapshot(trunk)
    _run(trainer)
    changed = _changed(before, trunk)
    parts = {".".join(k.split(".")[:2]) if k.startswith("blocks.") else k.split(".")[0] for k in changed}
    assert parts == {"blocks.13", "blocks.14", "blocks.15", "head"}
    assert not [k for k in changed if "running_" in k or "num_batches" in k]


def test_full_mode_trains_everything_and_updates_bn_statistics(tmp_path, folder):
    trainer = Trainer(_config(tmp_path, folder, trunk_mode="full"))
    trunk = trainer.model.convnet
    before = _snapshot(trunk)
    _run(trainer, 1)
    changed = _changed(before, trunk)
    assert "stem.conv.weight" in changed and "blocks.0.depthwise.bn.running_mean" in changed


def test_bad_trunk_settings_are_refused_by_name(tmp_path, folder):
    with pytest.raises(ValueError, match="trunk_mode 'frozen' needs a pretrained trunk"):
        Trainer(
            _config(tmp_path, folder, preset="small", image_size=32, model_options={}, trunk_mode="frozen")
        )
    with pytest.raises(ValueError, match="trunk_blocks must be 1-16"):
        Trainer(_config(tmp_path, folder, trunk_mode="last-blocks", trunk_blocks=17))
    with pytest.raises(ValueError, match="trunk_views must be an int >= 1"):
        Trainer(_config(tmp_path, folder, trunk_views=0))
    with pytest.raises(ValueError, match="trunk_mode must be one of"):
        configure_trunk(
            MultiScaleNet("lite0", image_size=SIZE, trunk_weights="random"), TrainConfig(trunk_mode="half")
        )


def test_the_cache_is_bounded_least_recently_used_first_out():
    model = MultiScaleNet("lite0", image_size=32, trunk_weights="random").eval()
    cache = TrunkFeatureCache(max_bytes=3 * 1280 * 4)
    x = torch.rand(5, 3, 32, 32)
    cache(model.convnet, x[:3])
    cache(model.convnet, x[:1])  # row 0 is now the most recent
    cache(model.convnet, x[3:5])  # evicts rows 1 and 2
    assert len(cache) == 3 and cache.nbytes == 3 * 1280 * 4
    computed = cache.computed
    cache(model.convnet, x[[0, 3, 4]])
    assert cache.computed == computed  # all three kept
    cache(model.convnet, x[[1, 1]])  # one row computed once, the repeat a hit
    assert cache.computed == computed + 1
    assert TrunkFeatureCache(max_bytes=0)(model.convnet, x[:2]).shape == (2, 1280)


def test_shift_views_gives_each_image_at_most_views_distinct_shifts():
    images = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(200, -1, -1, -1).contiguous()
    out = shift_views(images, 3, 4, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    distinct = {bytes(row.numpy()) for row in out}
    assert len(distinct) == 4 and bytes(images[0].numpy()) in distinct  # view 0 is unshifted
    offsets = view_offsets(3, 4)
    assert offsets.abs().max() <= 3 and torch.equal(offsets, view_offsets(3, 4))
    dy, dx = (int(v) for v in offsets[1])
    expected = torch.nn.functional.pad(images[:1].float(), (3, 3, 3, 3), mode="replicate")
    expected = expected[..., 3 + dy : 3 + dy + 16, 3 + dx : 3 + dx + 16].to(torch.uint8)
    assert bytes(expected[0].numpy()) in distinct
    assert shift_views(images, 3, 1) is images


def test_the_train_command_has_the_trunk_flags():
    import argparse

    from deeprank.training.config import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["d", "--preset", "lite0", "--trunk-mode", "last-blocks", "--trunk-blocks", "4"])
    config = config_from_args(args)
    assert (config.preset, config.trunk_mode, config.trunk_blocks) == ("lite0", "last-blocks", 4)
    assert config_from_args(parser.parse_args(["d"])).trunk_mode is None  # frozen for a trunk
