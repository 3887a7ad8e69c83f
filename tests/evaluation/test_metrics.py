"""Evaluation metrics against hand-computed examples and an independent brute-force implementation."""

import numpy as np
import pytest
import torch

from deeprank import evaluation as ev
from deeprank.data import random_crops


def col(*values):
    return np.array(values, dtype=np.float32)[:, None]


# ----------------------------------------------------------------------- hand-computed examples


def test_retrieval_metrics_hand_example():
    # Query at 0.1 (label 1); references 0,1,2,3 with labels 0,1,0,1: ranking rel = [0, 1, 0, 1], R = 2.
    m = ev.retrieval_metrics(col(0.1), [1], col(0, 1, 2, 3), [0, 1, 0, 1], ks=(1, 2, 3, 4))
    assert m["recall@1"] == 0.0 and m["precision@1"] == 0.0
    assert m["recall@2"] == 1.0 and m["precision@2"] == 0.5
    assert m["map@r"] == pytest.approx(0.25)  # (0 + 1/2) / 2
    assert m["map@3"] == pytest.approx(0.25)
    assert m["map@4"] == pytest.approx(0.5)  # (1/2 + 2/4) / min(4, 2)
    assert m["precision@4"] == 0.5


def test_retrieval_metrics_exclude_self_hand_example():
    # Points 0, 0.1, 5, 5.2 labelled a, a, b, a. Item 2 (b) has no other b: left out.
    # AP@R: item 0 -> rel [1, 0, 1] -> 1/2; item 1 -> same 1/2; item 3 -> [0, 1, 1] -> (0 + 1/2)/2.
    e = col(0, 0.1, 5, 5.2)
    m = ev.retrieval_metrics(e, list("aaba"), e, list("aaba"), ks=(1, 2), exclude_self=True)
    assert m["queries"] == 3 and m["queries_without_relevant"] == 1
    assert m["map@r"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert m["precision@1"] == pytest.approx(2 / 3)
    assert m["recall@2"] == 1.0


def test_similarity_precision_counts_ties_as_wrong():
    q = np.zeros((3, 2), np.float32)
    p = np.array([[1, 0], [0, 3], [1, 0]], np.float32)
    n = np.array([[0, 2], [0, 1], [0, 1]], np.float32)  # correct, wrong, tie
    assert ev.similarity_precision(q, p, n) == pytest.approx(1 / 3)


def test_score_at_top_k_hand_example():
    e = col(0, 1, 2, 3, 10)
    t = np.array([[0, 1, 4], [0, 4, 1], [0, 3, 4], [4, 3, 0]])
    # top-2 of 0 is {1, 2}: +1, -1 (n in top), not counted; top-2 of 4 is {3, 2}: +1.
    out = ev.score_at_top_k(e, t, k=2, return_counts=True)
    assert out == {"score": 1, "counted": 3, "correct": 2, "incorrect": 1}
    assert ev.score_at_top_k(e, t, k=2) == 1
    # Groups: item 4's group is {3, 4}; item 0's is {0, 1, 2} -> same counts.
    assert ev.score_at_top_k(e, t, k=2, groups=[0, 0, 0, 1, 1]) == 1
    # k = 4 covers everything: 2 correct ((0,1,4), (4,3,0)), (0,3,4) correct, (0,4,1) wrong -> 3 - 1.
    assert ev.score_at_top_k(e, t, k=4) == 2


def test_triplet_ranks_hand_example():
    e = col(0, 1, 2, 3, 10)
    rp, rn = ev.triplet_ranks(e, np.array([[0, 2, 1], [4, 0, 3]]))
    assert rp.tolist() == [2, 4] and rn.tolist() == [1, 1]


def test_crop_retrieval_hand_example():
    ref = col(0, 1, 2, 3)
    crops = col(0.1, 2.9, 1.6)  # nearest: 0 (source 0), 3 (source 3), 2 (source 1 -> rank 2)
    out = ev.crop_retrieval(crops, [0, 3, 1], ref, ks=(1, 2))
    assert out == {"crop_recall@1": pytest.approx(2 / 3), "crop_recall@2": 1.0}


# ----------------------------------------------------------------------- against brute force


def brute_force(q, ql, r, rl, ks, exclude_self):
    """Loop-per-query float64 reference of the definitions in deeprank.evaluation.metrics."""
    sums = {}
    counted = 0
    for i in range(len(q)):
        d = ((r.astype(np.float64) - q[i]) ** 2).sum(1)
        order = np.argsort(d, kind="stable")
        if exclude_self:
            order = order[order != i]
        rel = (rl[order] == ql[i]).astype(float)
        big_r = int(rel.sum())
        if big_r == 0:
            continue
        counted += 1
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        vals = {"map@r": (prec[:big_r] * rel[:big_r]).sum() / big_r}
        for k in ks:
            vals[f"recall@{k}"] = float(rel[:k].any())
            vals[f"precision@{k}"] = rel[:k].mean()
            vals[f"map@{k}"] = (prec[:k] * rel[:k]).sum() / min(k, big_r)
        for key, v in vals.items():
            sums[key] = sums.get(key, 0.0) + v
    return {k: v / counted for k, v in sums.items()}, counted


@pytest.mark.parametrize("exclude_self", [False, True])
def test_retrieval_metrics_match_brute_force(rng, monkeypatch, exclude_self):
    monkeypatch.setattr(ev.metrics, "_BLOCK_ELEMENTS", 300)  # force many query chunks
    n, d = 157, 5
    r = rng.normal(size=(n, d)).astype(np.float32)
    rl = rng.integers(0, 6, n)
    if exclude_self:
        q, ql = r, rl
    else:
        q = rng.normal(size=(41, d)).astype(np.float32)
        ql = rng.integers(0, 7, 41)  # label 6 never appears among references
    ks = (1, 3, 10, 50)
    got = ev.retrieval_metrics(q, ql, r, rl, ks=ks, exclude_self=exclude_self)
    want, counted = brute_force(q, ql, r, rl, ks, exclude_self)
    assert got["queries"] == counted
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_score_and_ranks_match_brute_force(rng):
    n = 120
    e = rng.normal(size=(n, 4)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    t = ev.sample_labelled_triplets(labels, 300, seed=1)
    k = 10
    d = ((e[:, None, :].astype(np.float64) - e[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    score = 0
    for q, p, nn in t:
        top = np.argsort(d[q], kind="stable")[:k]
        if p in top or nn in top:
            score += 1 if d[q, p] < d[q, nn] else -1
    assert ev.score_at_top_k(e, t, k=k) == score
    rp, rn = ev.triplet_ranks(e, t)
    assert rp.tolist() == [1 + int((d[q] < d[q, p]).sum()) for q, p, _ in t]
    assert rn.tolist() == [1 + int((d[q] < d[q, nn]).sum()) for q, _, nn in t]


# ----------------------------------------------------------------------- sampling, crops, tables


def test_sampled_triplets_respect_labels():
    labels = np.array([0, 0, 1, 1, 1, 2])  # class 2 has one item: never a query
    t = ev.sample_labelled_triplets(labels, 500, seed=3)
    assert (labels[t[:, 0]] == labels[t[:, 1]]).all() and (labels[t[:, 0]] != labels[t[:, 2]]).all()
    assert (t[:, 0] != t[:, 1]).all() and 5 not in t[:, 0]
    assert set(t[:, 2]) == {0, 1, 2, 3, 4, 5}
    each = ev.triplets_for_each_query(labels, per_image=2, seed=0)
    assert sorted(each[:, 0].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(ValueError, match="two classes"):
        ev.sample_labelled_triplets([1, 1, 1], 3)


def test_random_crops_are_sub_images():
    img = torch.arange(16.0).view(1, 1, 4, 4).repeat(5, 1, 1, 1) / 16
    full = random_crops(img, scale=(1.0, 1.0))
    assert torch.allclose(full, img, atol=1e-6)
    crops = random_crops(img, scale=(0.25, 0.25), seed=1)
    assert crops.shape == img.shape and not torch.allclose(crops, img)


def test_bad_inputs_raise_clear_errors():
    e = col(0, 1, 2)
    with pytest.raises(ValueError, match="NaN"):
        ev.retrieval_metrics(col(np.nan), [0], e, [0, 1, 0])
    with pytest.raises(ValueError, match=r"every k"):
        ev.retrieval_metrics(e, [0, 1, 0], e, [0, 1, 0], ks=(3,), exclude_self=True)
    with pytest.raises(ValueError, match="dimension"):
        ev.retrieval_metrics(np.zeros((1, 2)), [0], e, [0, 1, 0])
    with pytest.raises(ValueError, match="triplet indices"):
        ev.score_at_top_k(e, [[0, 1, 3]])


def test_results_table_files(tmp_path):
    rows = [
        {"method": "a", "similarity_precision": 0.5, "score@30": 12.0, "dim": 4},
        {"method": "b", "similarity_precision": 0.75, "score@30": -3.0, "dim": 8},
    ]
    json_path, md_path = ev.write_results(rows, tmp_path, info={"data": "x"})
    md = md_path.read_text()
    assert "| b | 75.0% | -3 | 8 |" in md and "- data: x" in md
    import json

    assert json.loads(json_path.read_text())["results"][1]["method"] == "b"
