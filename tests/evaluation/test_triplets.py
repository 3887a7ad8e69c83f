"""Labelled triplets: sampled from class labels, one per query, and written as a CSV for a folder."""

import numpy as np
import pytest
from PIL import Image

from deeprank import evaluation as ev
from deeprank.data import read_triplet_csv
from deeprank.errors import DeeprankError


def test_sampled_triplets_respect_labels():
    labels = np.array([0, 0, 1, 1, 1, 2])  # class 2 has one item: never a query
    t = ev.sample_labelled_triplets(labels, 500, seed=3)
    assert t.dtype == np.int64 and t.shape == (500, 3)
    assert (labels[t[:, 0]] == labels[t[:, 1]]).all() and (labels[t[:, 0]] != labels[t[:, 2]]).all()
    assert (t[:, 0] != t[:, 1]).all() and 5 not in t[:, 0]
    assert set(t[:, 2]) == {0, 1, 2, 3, 4, 5}
    np.testing.assert_array_equal(t, ev.sample_labelled_triplets(labels, 500, seed=3))  # seeded
    with pytest.raises(ValueError, match="two classes"):
        ev.sample_labelled_triplets([1, 1, 1], 3)
    with pytest.raises(ValueError, match="no class has two images"):
        ev.sample_labelled_triplets([0, 1, 2], 3)


def test_sampled_partners_are_uniform(rng):
    # Class sizes 3 and 5: the positive of item 0 is 1 or 2 half the time each; negatives uniform.
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    t = ev.triplets_for_each_query(labels, per_image=4000, seed=int(rng.integers(1 << 31)))
    first = t[t[:, 0] == 0]
    assert set(first[:, 1]) == {1, 2} and abs((first[:, 1] == 1).mean() - 0.5) < 0.05
    counts = np.bincount(first[:, 2], minlength=8)[3:]
    assert (abs(counts / counts.sum() - 0.2) < 0.04).all()


def test_triplets_for_each_query_in_item_order():
    labels = np.array([0, 0, 1, 1, 1, 2])
    each = ev.triplets_for_each_query(labels, per_image=2, seed=0)
    assert each[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def write_folder(root, sizes):
    for c, count in enumerate(sizes):
        (root / f"cat{c}").mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (40 * c, 10 * i, 0)).save(root / f"cat{c}" / f"{i}.png")


def test_write_folder_triplets_round_trips_through_the_csv_reader(tmp_path):
    write_folder(tmp_path / "images", (3, 4))
    out = tmp_path / "lists" / "t.csv"
    out.parent.mkdir()
    assert ev.write_folder_triplets(tmp_path / "images", out, per_image=2, seed=1) == 14
    assert out.read_text().splitlines()[0] == "query,positive,negative"
    assert out.read_text().splitlines()[1].startswith("../images/cat0/")  # relative to the CSV
    rows = read_triplet_csv(out)
    assert len(rows) == 14 and all(p.is_file() for row in rows for p in row)
    assert all(q.parent == p.parent != n.parent and q != p for q, p, n in rows)


def test_a_folder_needs_two_categories(tmp_path):
    write_folder(tmp_path / "one", (3,))
    with pytest.raises(DeeprankError, match="at least two category"):
        ev.write_folder_triplets(tmp_path / "one", tmp_path / "t.csv")
