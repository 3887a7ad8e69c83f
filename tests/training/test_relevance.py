"""Relevance sources (deeprank.training.relevance): score tables, the golden feature, training with them."""

import numpy as np
import pytest

from deeprank.data.folders import ImageFolder
from deeprank.models.checkpoint import load_config
from deeprank.training import train
from deeprank.training.relevance import ClassRelevance, TableRelevance, build_relevance, golden_relevance
from deeprank.training.sampler import ReservoirTripletSampler


def test_only_class_labels_lack_an_order_inside_a_category():
    assert ClassRelevance.in_class_order is False
    assert TableRelevance.in_class_order is True
    assert golden_relevance(np.zeros((2, 8, 8), np.uint8), [0, 0]).in_class_order is True


def test_table_relevance_from_csv(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text(
        "image_a,image_b,score\na.jpg,b.jpg,0.9\nb.jpg,c.jpg,0.2\na.jpg,c.jpg,0.1\nc.jpg,d.jpg,5\n"
    )
    table = TableRelevance.from_csv(path, categories={"a.jpg": 0, "b.jpg": 0, "c.jpg": 0, "d.jpg": 1})
    assert table.pair("a.jpg", "b.jpg") == table.pair("b.jpg", "a.jpg") == 0.9
    assert table.pair("c.jpg", "d.jpg") == 0.0  # across categories: ignored
    assert table.totals["a.jpg"] == pytest.approx(1.0)
    assert table.totals["c.jpg"] == pytest.approx(0.3)
    sampler = ReservoirTripletSampler(10, pair_relevance=table.pair, seed=0, max_tries=200)
    triplets = [t for t in sampler.stream(table.items()) if t is not None]
    for t in triplets:
        if not t.out_of_class:
            assert table.pair(t.query, t.positive) > table.pair(t.query, t.negative)
    bad = tmp_path / "bad.csv"
    bad.write_text("a.jpg,b.jpg,0.5\na.jpg,c.jpg,lots\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        TableRelevance.from_csv(bad)


def test_a_table_for_a_folder_is_indexed_by_image(small, image_folder, tmp_path):
    folder = ImageFolder(image_folder(corrupt=False))
    table = tmp_path / "scores.csv"
    table.write_text("c0/0.png,c0/1.png,0.5\nc0/2.png,c0/0.png,0.25\nc1/0.png,c2/0.png,9\n")
    relevance = build_relevance(
        small(relevance=str(table)), list(range(len(folder))), folder.labels, None, folder
    )
    index = {str(p.relative_to(folder.root)): i for i, p in enumerate(folder.paths)}
    a, b, c = index["c0/0.png"], index["c0/1.png"], index["c0/2.png"]
    assert relevance.pair(a, b) == 0.5 and relevance.pair(c, a) == 0.25
    assert relevance.pair(index["c1/0.png"], index["c2/0.png"]) == 0.0  # across categories
    expected = np.zeros(len(folder))
    expected[[a, b, c]] = [0.75, 0.5, 0.25]
    np.testing.assert_array_equal(relevance.totals, expected)


def test_golden_relevance_drives_the_sampler():
    from deeprank.data import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    images, labels = images[:120], labels[:120]
    golden = golden_relevance(images, labels)
    assert golden.totals.shape == (120,) and (golden.totals > 0).all()
    # totals are the in-category sums of the pairwise relevance
    members = np.flatnonzero(labels == labels[0])
    expected = sum(golden.pair(0, int(j)) for j in members if j != 0)
    assert golden.totals[0] == pytest.approx(expected, rel=1e-4)
    assert 0 < golden.pair(0, int(members[1])) <= 1
    sampler = ReservoirTripletSampler(50, pair_relevance=golden.pair, max_tries=200, seed=0)
    triplets = list(sampler.stream(golden.items()))
    assert triplets
    for t in triplets:
        assert labels[t.query] == labels[t.positive]
        if t.out_of_class:
            assert labels[t.negative] != labels[t.query]
        else:
            assert golden.pair(t.query, t.positive) > golden.pair(t.query, t.negative)


def test_training_with_a_relevance_table_and_with_golden_features(small, image_folder, tmp_path):
    root = image_folder(corrupt=False)
    table = tmp_path / "scores.csv"
    rows = [
        f"c{c}/{i}.png,c{c}/{j}.png,{1.0 / (1 + abs(i - j))}"
        for c in range(3)
        for i in range(6)
        for j in range(i)
    ]
    table.write_text("image_a,image_b,score\n" + "\n".join(rows) + "\n")
    out = train(
        small("table", data=str(root), relevance=str(table), image_size=32, batch_size=4),
        progress=False,
    )
    assert load_config(out)["train"]["relevance"] == str(table)
    out = train(
        small("golden", data=str(root), relevance="golden", image_size=32, batch_size=4),
        progress=False,
    )
    assert load_config(out)["progress"]["step"] == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("c0/0.png,elsewhere/x.png,1.0\n")
    with pytest.raises(ValueError, match="not in"):
        train(small("bad", data=str(root), relevance=str(bad), image_size=32), progress=False)
