"""Evaluation metrics against hand-computed examples and independent float64 loop-per-query references."""

import numpy as np
import pytest

from deeprank import evaluation as ev
from deeprank.evaluation import neighbours


def col(*values):
    return np.array(values, dtype=np.float32)[:, None]


# ----------------------------------------------------------------------- hand-computed examples


def test_retrieval_metrics_hand_example():
    # Query at 0.1 (label 1); references 0,1,2,3 with labels 0,1,0,1: ranking rel = [0, 1, 0, 1], R = 2.
    m = ev.retrieval_metrics(col(0.1), [1], col(0, 1, 2, 3), [0, 1, 0, 1], ks=(1, 2, 3, 4))
    assert m["recall@1"] == 0.0 and m["precision@1"] == 0.0
    assert m["recall@2"] == 1.0 and m["precision@2"] == 0.5
    assert m["mean_average_precision_at_r"] == pytest.approx(0.25)  # (0 + 1/2) / 2
    assert m["map@3"] == pytest.approx(0.25)
    assert m["map@4"] == pytest.approx(0.5)  # (1/2 + 2/4) / min(4, 2)
    assert m["precision@4"] == 0.5


def test_retrieval_metrics_exclude_self_hand_example():
    # Points 0, 0.1, 5, 5.2 labelled a, a, b, a. Item 2 (b) has no other b: left out.
    # AP@R: item 0 -> rel [1, 0, 1] -> 1/2; item 1 -> same 1/2; item 3 -> [0, 1, 1] -> (0 + 1/2)/2.
    e = col(0, 0.1, 5, 5.2)
    m = ev.retrieval_metrics(e, list("aaba"), e, list("aaba"), ks=(1, 2), exclude_self=True)
    assert m["queries"] == 3 and m["queries_without_relevant"] == 1
    assert m["mean_average_precision_at_r"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
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


# ----------------------------------------------------------------------- references


def distances(a, b):
    """float64 squared distances of every row of ``a`` to every row of ``b`` (test sizes only)."""
    return ((a[:, None, :].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1)


def ranking(d_row, own=None):
    """Candidates nearest first, equal distances by smaller index, the query's own row left out.

    Distances are compared as topk reports them: exact, rounded once to float32 (two float64 values
    that round to one float32 are a tie)."""
    order = np.argsort(d_row.astype(np.float32), kind="stable")
    return order if own is None else order[order != own]


def reference_retrieval(q, ql, r, rl, ks, exclude_self):
    sums, counted = {}, 0
    d = distances(q, r)
    rels = [(rl[ranking(d[i], i if exclude_self else None)] == ql[i]).astype(float) for i in range(len(q))]
    r_max = max(int(rel.sum()) for rel in rels)
    for rel in rels:
        big_r = int(rel.sum())
        if big_r == 0:
            continue
        counted += 1
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        first = np.flatnonzero(rel[:r_max])
        vals = {
            "mean_average_precision_at_r": (prec[:big_r] * rel[:big_r]).sum() / big_r,
            "r_precision": rel[:big_r].mean(),
            "mean_reciprocal_rank": 1.0 / (first[0] + 1) if first.size else 0.0,
            "precision_at_1": rel[0],
        }
        for k in ks:
            vals[f"recall@{k}"] = float(rel[:k].any())
            vals[f"precision@{k}"] = rel[:k].mean()
            vals[f"map@{k}"] = (prec[:k] * rel[:k]).sum() / min(k, big_r)
        for key, v in vals.items():
            sums[key] = sums.get(key, 0.0) + v
    return {key: v / max(counted, 1) for key, v in sums.items()}, counted


def reference_score(e, t, k, groups=None):
    g = np.zeros(len(e), int) if groups is None else np.asarray(groups)
    d = distances(e, e)
    score = counted = 0
    for q, p, n in t:
        members = np.flatnonzero(g == g[q])
        top = members[ranking(d[q, members], int(np.searchsorted(members, q)))][:k]
        if p in top or n in top:
            counted += 1
            score += 1 if d[q, p] < d[q, n] else -1
    return score, counted


def reference_precision(e, t):
    d = distances(e, e)
    return float(np.mean([d[q, p] < d[q, n] for q, p, n in t]))


def reference_crops(c, src, r, ks):
    d = distances(c, r)
    rank = [int(np.flatnonzero(ranking(d[i]) == s)[0]) + 1 for i, s in enumerate(src)]
    return {f"crop_recall@{k}": float(np.mean([x <= k for x in rank])) for k in ks}


def embeddings(rng, n, kind):
    if kind == "ties":  # small integers: exact float32 distances, most of them tied, duplicate points
        return rng.integers(0, 3, size=(n, 3)).astype(np.float32)
    return rng.normal(size=(n, 5)).astype(np.float32)


# ----------------------------------------------------------------------- against the references


@pytest.mark.parametrize("kind", ["ties", "normal"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_retrieval_metrics_match_reference(rng, monkeypatch, exclude_self, kind):
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 300)  # force many query chunks
    n = 157
    r = embeddings(rng, n, kind)
    rl = rng.integers(0, 6, n)
    if exclude_self:
        rl[:2] = [6, 7]  # alone in their class: no relevant item once the query itself is left out
        q, ql = r, rl
    else:
        q = embeddings(rng, 41, kind)
        ql = rng.integers(0, 7, 41)  # label 6 never appears among references
    top = n - 1 if exclude_self else n
    ks = (1, 3, 10, 50, top)
    got = ev.retrieval_metrics(q, ql, r, rl, ks=ks, exclude_self=exclude_self)
    want, counted = reference_retrieval(q, ql, r, rl, ks, exclude_self)
    assert got["queries"] == counted and got["queries_without_relevant"] == len(q) - counted > 0
    assert set(got) == set(want) | {"queries", "queries_without_relevant"}
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    no_r = ev.retrieval_metrics(q, ql, r, rl, ks=(1,), exclude_self=exclude_self, map_at_r=False)
    assert "mean_average_precision_at_r" not in no_r and no_r["recall@1"] == pytest.approx(
        want["recall@1"], abs=1e-9
    )


def test_similarity_precision_and_triplet_distances_match_reference(rng):
    q, p, n = (embeddings(rng, 300, "ties") for _ in range(3))  # many exact ties: counted as wrong
    dqp, dqn = ev.triplet_distances(q, p, n)
    for i in range(300):
        assert dqp[i] == ((q[i].astype(np.float64) - p[i]) ** 2).sum()
        assert dqn[i] == ((q[i].astype(np.float64) - n[i]) ** 2).sum()
    assert (dqp == dqn).sum() > 10
    t = np.arange(300)[:, None] + np.array([0, 300, 600])
    assert ev.similarity_precision(q, p, n) == reference_precision(np.concatenate([q, p, n]), t)


@pytest.mark.parametrize("kind", ["ties", "normal"])
def test_score_at_top_k_matches_reference(rng, monkeypatch, kind):
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 200)
    n = 120
    e = embeddings(rng, n, kind)
    labels = rng.integers(0, 3, n)
    t = ev.sample_labelled_triplets(labels, 300, seed=1)
    groups = rng.integers(0, 4, n)
    groups[np.flatnonzero(groups == 3)[1:]] = 0  # group 3 has one image: its queries never count
    for k in (1, 10, n):
        for g in (None, groups):
            score, counted = reference_score(e, t, k, g)
            got = ev.score_at_top_k(e, t, k=k, groups=g, return_counts=True)
            assert (got["score"], got["counted"]) == (score, counted), (k, g is None)
            assert got["correct"] - got["incorrect"] == score and got["correct"] + got["incorrect"] == counted


def test_crop_retrieval_matches_reference(rng, monkeypatch):
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 100)
    r = embeddings(rng, 90, "ties")
    src = rng.integers(0, 90, 37)
    crops = r[src] + rng.integers(-1, 2, size=(37, 3)).astype(np.float32)
    ks = (1, 4, 90)
    assert ev.crop_retrieval(crops, src, r, ks=ks) == pytest.approx(reference_crops(crops, src, r, ks))


@pytest.mark.parametrize("kind", ["ties", "normal"])
def test_evaluate_embeddings_matches_each_metric(rng, monkeypatch, kind):
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 500)
    n = 101
    e = embeddings(rng, n, kind)
    labels = rng.integers(0, 5, n)
    labels[0] = 9  # a query without relevant items
    t = ev.sample_labelled_triplets(labels, 250, seed=2)
    src = rng.choice(n, 20, replace=False)
    crops = e[src] + rng.normal(0, 0.5, size=(20, e.shape[1])).astype(np.float32)
    for k, ks in ((30, (1, 10)), (1, (1,)), (n, (1, n - 1))):
        row = ev.evaluate_embeddings(e, labels, t, k=k, ks=ks, crop_embeddings=crops, crop_sources=src)
        retrieval, _ = reference_retrieval(e, labels, e, labels, ks, exclude_self=True)
        want = {
            "similarity_precision": reference_precision(e, t),
            f"score@{k}": float(reference_score(e, t, k)[0]),
            **{f"recall@{kk}": retrieval[f"recall@{kk}"] for kk in ks},
            **{key: retrieval[key] for key in ("precision_at_1", "r_precision")},
            **{key: retrieval[key] for key in ("mean_average_precision_at_r", "mean_reciprocal_rank")},
            **reference_crops(crops, src, e, ks),
        }
        assert list(row) == list(want)
        assert row == pytest.approx(want, abs=1e-9), k


def test_evaluate_embeddings_searches_the_collection_once(rng, monkeypatch):
    """Score-at-top-K and every retrieval metric share one search: no collection row is searched twice."""
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 400)  # several blocks per search
    n = 90
    e = rng.normal(size=(n, 4)).astype(np.float32)
    labels = np.arange(n) % 4
    t = ev.sample_labelled_triplets(labels, 200, seed=0)
    crops = rng.normal(size=(15, 4)).astype(np.float32)
    row_of = {v.tobytes(): i for i, v in enumerate(e)}
    searched = np.zeros(n, int)
    crop_searches = []
    real_topk = neighbours.topk

    def counting_topk(queries, database, k, **kwargs):
        assert database.shape[0] == n
        hits = [row_of.get(v.tobytes()) for v in queries]
        if all(h is not None for h in hits):
            np.add.at(searched, hits, 1)
        else:
            crop_searches.append(len(queries))
        return real_topk(queries, database, k, **kwargs)

    monkeypatch.setattr(neighbours, "topk", counting_topk)
    ev.evaluate_embeddings(e, labels, t, k=30, crop_embeddings=crops, crop_sources=np.arange(15))
    assert searched.max() == 1 and searched.sum() == n  # every item is a retrieval query, once
    assert sum(crop_searches) == 15  # the crops: their own, single search


def test_bad_inputs_raise_clear_errors():
    e = col(0, 1, 2)
    with pytest.raises(ValueError, match="NaN"):
        ev.retrieval_metrics(col(np.nan), [0], e, [0, 1, 0])
    with pytest.raises(
        ValueError, match=r"k must be between 1 and the number of other references \(2\), got 3"
    ):
        ev.retrieval_metrics(e, [0, 1, 0], e, [0, 1, 0], ks=(3,), exclude_self=True)
    with pytest.raises(ValueError, match="dimension"):
        ev.retrieval_metrics(np.zeros((1, 2)), [0], e, [0, 1, 0])
    with pytest.raises(ValueError, match="triplet indices"):
        ev.score_at_top_k(e, [[0, 1, 3]])
    with pytest.raises(ValueError, match=r"number of embeddings \(3\), got 4"):
        ev.score_at_top_k(e, [[0, 1, 2]], k=4)
    with pytest.raises(TypeError, match="k must be an int"):
        ev.evaluate_embeddings(e, [0, 1, 0], [[0, 2, 1]], k=2.5)
    with pytest.raises(ValueError, match=r"number of references \(3\), got 5"):
        ev.crop_retrieval(e, [0, 1, 2], e, ks=(1, 5))
    with pytest.raises(ValueError, match="source_index"):
        ev.crop_retrieval(e, [0, 1], e)
    with pytest.raises(ValueError, match="at least one triplet"):
        ev.similarity_precision(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2)))
