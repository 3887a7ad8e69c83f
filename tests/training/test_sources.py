"""Triplet sources (deeprank.training.sources): batches, categories, resumable state, data kinds."""

import copy

import pytest
import torch

from deeprank.data.images import SkippedImages
from deeprank.errors import EmptyCollectionError
from deeprank.models.checkpoint import load_config, load_model
from deeprank.training import train
from deeprank.training.loop import Trainer
from deeprank.training.sources import (
    Batch,
    InstanceSource,
    SampledSource,
    TripletListSource,
    build_source,
    data_kind,
)


def _csv(tmp_path, root):
    path = tmp_path / "t.csv"
    rows = [
        f"{root.name}/c{c}/{i}.png,{root.name}/c{c}/{(i + 1) % 6}.png,{root.name}/c{(c + 1) % 3}/{i}.png"
        for c in range(3)
        for i in range(6)
    ]
    path.write_text("query,positive,negative\n" + "\n".join(rows))
    return path


def _sources(small, image_folder, tmp_path):
    """One config per source kind: (name, config, image size, channels)."""
    root = image_folder(corrupt=False)
    return {
        "fashion-mnist": (small(), 28, 1),
        "folder": (small(data=str(root)), 16, 3),
        "golden": (small(data=str(root), relevance="golden"), 16, 3),
        "triplets": (small(data=str(_csv(tmp_path, root))), 16, 3),
        "unlabelled": (small(data=str(root / "c1"), data_kind="unlabelled"), 16, 3),
    }


def _rows(images):
    return [bytes(x.numpy().tobytes()) for x in images]


def test_every_source_gives_a_batch_of_stacked_triplets(small, image_folder, tmp_path):
    b = 5
    for name, (config, size, channels) in _sources(small, image_folder, tmp_path).items():
        source, _ = build_source(config, size, channels, SkippedImages())
        batch = source.next_batch(b)
        assert isinstance(batch, Batch) and batch.triplets == b, name
        assert batch.images.dtype == torch.uint8 and batch.images.shape == (3 * b, channels, size, size), name
        if name == "triplets":
            assert batch.labels is None
            continue
        labels = batch.labels
        assert labels.dtype == torch.long and labels.shape == (3 * b,), name
        q, p, n = labels.chunk(3)
        assert torch.equal(q, p), name
        if source.categories_are_relevance:  # no order inside a category: out-of-class negatives
            assert (q != n).all(), name
        if isinstance(source, InstanceSource):  # labels are image ids; the query is the whole image
            assert _rows(batch.images[:b]) == _rows(torch.stack([source.store.get(int(i)) for i in q]))


def test_sampled_labels_are_the_categories_of_the_gathered_images(small):
    source, _ = build_source(small(), 28, 1, SkippedImages())
    label_of = dict(zip(_rows(source.images), source.labels.tolist(), strict=True))
    batch = source.next_batch(16)
    assert [label_of[r] for r in _rows(batch.images)] == batch.labels.tolist()


def test_triplet_list_batches_are_rows_of_the_csv(small, image_folder, tmp_path):
    root = image_folder(corrupt=False)
    source, _ = build_source(small(data=str(_csv(tmp_path, root))), 16, 3, SkippedImages())
    assert isinstance(source, TripletListSource)
    batch = source.next_batch(4)
    known = {tuple(_rows(torch.stack([source.store.get(int(i)) for i in t]))) for t in source.triplets}
    q, p, n = batch.images.chunk(3)
    for k in range(4):
        assert tuple(_rows(torch.stack([q[k], p[k], n[k]]))) in known


def test_categories_are_relevance_decides_the_auto_mining(small, image_folder, tmp_path):
    expected = {
        "fashion-mnist": (True, "batch-all"),
        "folder": (True, "batch-all"),
        "golden": (False, "none"),  # an order inside categories: keep the sampler's triplets
        "triplets": (False, "none"),
        "unlabelled": (True, "batch-all"),
    }
    for name, (config, size, _) in _sources(small, image_folder, tmp_path).items():
        config.image_size = size
        trainer = Trainer(config)
        assert (trainer.source.categories_are_relevance, trainer.mining) == expected[name], name
    config, size, _ = _sources(small, image_folder, tmp_path)["golden"]
    config.mining, config.image_size = "semi-hard", size
    assert Trainer(config).mining == "semi-hard"  # an explicit mode is kept


def test_the_sampler_gets_in_class_negatives_from_the_relevance(small, image_folder):
    root = image_folder(corrupt=False)
    classes, _ = build_source(small(data=str(root)), 16, 3, SkippedImages())
    golden, _ = build_source(small(data=str(root), relevance="golden"), 16, 3, SkippedImages())
    assert isinstance(classes, SampledSource) and isinstance(golden, SampledSource)
    assert not classes.relevance.in_class_order and golden.relevance.in_class_order
    assert not classes.sampler.in_class_negatives and classes.sampler.out_of_class_fraction == 1.0
    assert golden.sampler.in_class_negatives and golden.sampler.out_of_class_fraction == 0.2


def test_a_source_continues_exactly_from_its_state(small, image_folder, tmp_path):
    for name, (config, size, channels) in _sources(small, image_folder, tmp_path).items():
        first, _ = build_source(config, size, channels, SkippedImages())
        for _ in range(4):  # past a pass of the small folders: buffers reset, orders redrawn
            first.next_batch(6)
        state = copy.deepcopy(first.state_dict())
        expected = [first.next_batch(6) for _ in range(3)]
        config.seed += 1  # the state, not the seed, must decide what comes next
        second, _ = build_source(config, size, channels, SkippedImages())
        second.load_state_dict(state)
        for a, b in zip(expected, [second.next_batch(6) for _ in range(3)], strict=True):
            assert torch.equal(a.images, b.images), name
            assert (a.labels is None and b.labels is None) or torch.equal(a.labels, b.labels), name
        assert first.epoch_float == second.epoch_float, name


def test_data_kind_detection(small, image_folder, tmp_path):
    root = image_folder(corrupt=False)
    assert data_kind(small()) == "fashion-mnist"
    assert data_kind(small(data="fashion-mnist:train")) == "fashion-mnist"
    assert data_kind(small(data=str(root))) == "folder"
    assert data_kind(small(data=str(tmp_path / "x.CSV"))) == "triplets"
    assert data_kind(small(data=str(root), data_kind="unlabelled")) == "unlabelled"
    with pytest.raises(FileNotFoundError, match="training data not found"):
        data_kind(small(data=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="data_kind must be auto, fashion-mnist"):
        data_kind(small(data_kind="video"))
    with pytest.raises(ValueError, match="data_kind"):
        train(small(data_kind="video"), progress=False)


def test_image_folder_training_skips_corrupt_images(small, image_folder):
    root = image_folder()
    config = small(data=str(root), image_size=32, max_steps=8, batch_size=6, buffer_capacity=50)
    with pytest.warns(RuntimeWarning, match="broken.png"):
        out = train(config, progress=False)
    model, saved = load_model(out)
    assert model.in_channels == 3 and model.image_size == 32
    assert saved["progress"]["skipped"] == 1 and saved["data"]["classes"] == ["c0", "c1", "c2"]


def test_triplet_csv_and_unlabelled_training(small, image_folder, tmp_path):
    root = image_folder(corrupt=False)
    out = train(small("csv", data=str(_csv(tmp_path, root)), image_size=32, batch_size=4), progress=False)
    assert load_config(out)["data"]["kind"] == "triplets"
    out = train(
        small(
            "inst",
            data=str(root / "c1"),
            data_kind="unlabelled",
            image_size=32,
            batch_size=4,
            mining="semi-hard",
        ),
        progress=False,
    )
    assert load_config(out)["data"] == {"kind": "unlabelled", "path": str(root / "c1"), "images": 6}


@pytest.mark.parametrize("batch_size", [1, 8, 50])
def test_one_readable_triplet_of_three_is_enough_for_any_batch(small, image_folder, tmp_path, batch_size):
    root = image_folder()  # c0/broken.png is unreadable
    r = root.name
    rows = [f"{r}/c0/0.png,{r}/c0/1.png,{r}/c1/0.png", f"{r}/c0/broken.png,{r}/c0/1.png,{r}/c1/0.png"]
    rows.append(f"{r}/c0/0.png,{r}/c0/1.png,{r}/c0/broken.png")
    path = tmp_path / "one-good.csv"
    path.write_text("\n".join(rows))
    source = TripletListSource(str(path), small(data=str(path)), 16, 3, SkippedImages())
    for _ in range(3):
        batch = source.next_batch(batch_size)
        assert batch.triplets == batch_size
    good = source.store.get(0), source.store.get(1), source.store.get(3)  # sorted names: broken is 2
    expected = torch.cat([g.expand(batch_size, -1, -1, -1) for g in good])
    assert torch.equal(batch.images, expected)


def test_a_csv_whose_every_triplet_is_unreadable_is_one_clear_error(small, image_folder, tmp_path):
    root = image_folder()
    r = root.name
    path = tmp_path / "all-bad.csv"
    path.write_text(
        f"{r}/c0/broken.png,{r}/c0/1.png,{r}/c1/0.png\n{r}/c0/0.png,{r}/c0/broken.png,{r}/c1/1.png"
    )
    source = TripletListSource(str(path), small(data=str(path)), 16, 3, SkippedImages())
    with pytest.raises(EmptyCollectionError, match="every triplet of .* has an unreadable image"):
        source.next_batch(8)
