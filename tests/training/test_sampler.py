"""ReservoirTripletSampler (Algorithm 1): exact rules and statistics."""

import math

import numpy as np
import pytest

from deeprank.training.relevance import ClassRelevance
from deeprank.training.sampler import ReservoirTripletSampler


def _z_ok(observed, expected, n, z=4.5, n_expected=None):
    """Binomial check: |observed - expected| within z standard errors (fails ~1e-5 by chance).

    ``n_expected``: sample size behind ``expected`` when it is itself an estimate.
    """
    var = max(expected * (1 - expected), 1e-12)
    se = math.sqrt(var / n + (var / n_expected if n_expected else 0.0))
    return abs(observed - expected) <= z * se + 1e-12


def test_buffer_membership_follows_total_relevance_capacity_one():
    """With capacity 1 the kept image is drawn exactly proportional to total relevance."""
    weights = [1.0, 2.0, 3.0, 4.0, 10.0]
    categories = 4000  # independent reservoirs in one stream
    sampler = ReservoirTripletSampler(2, seed=7)
    sampler.capacity = 1  # reservoir-only statistics: one slot per category
    items = [((c, i), c, w) for i, w in enumerate(weights) for c in range(categories)]
    for ref, category, relevance in items:
        sampler.insert(ref, category, relevance)
    counts = np.zeros(len(weights))
    for c in range(categories):
        (kept,) = sampler.buffer(c)
        counts[kept[1]] += 1
    expected = np.asarray(weights) / sum(weights)
    for i in range(len(weights)):
        assert _z_ok(counts[i] / categories, expected[i], categories), (counts / categories, expected)


def test_buffer_membership_matches_weighted_sampling_without_replacement(rng):
    """Capacity k: inclusion frequencies equal successive weighted draws without replacement."""
    weights = np.array([0.5, 1.0, 1.0, 2.0, 4.0, 8.0])
    k, trials = 3, 3000
    sampler = ReservoirTripletSampler(k, seed=int(rng.integers(1 << 30)))
    order = rng.permutation(len(weights))  # stream order must not matter
    for c in range(trials):
        for i in order:
            sampler.insert(int(i), c, float(weights[i]))
    observed = np.zeros(len(weights))
    for c in range(trials):
        for i in sampler.buffer(c):
            observed[i] += 1
    reference = np.zeros(len(weights))
    ref_trials = 6000
    for _ in range(ref_trials):
        reference[rng.choice(len(weights), size=k, replace=False, p=weights / weights.sum())] += 1
    for i in range(len(weights)):
        expected = reference[i] / ref_trials
        assert _z_ok(observed[i] / trials, expected, trials, n_expected=ref_trials), (observed, reference)


def test_buffers_stay_at_capacity_and_memory_is_bounded():
    sampler = ReservoirTripletSampler(50, seed=0)
    emitted = sum(1 for _ in sampler.stream((i, i % 3, 1.0) for i in range(30000)))
    assert len(sampler) == 150
    assert all(len(sampler.buffer(c)) == 50 for c in range(3))
    assert sampler.seen == 30000 and emitted == sampler.emitted > 29000


def test_class_labels_give_valid_out_of_class_triplets():
    labels = np.random.default_rng(0).integers(0, 5, 5000)
    source = ClassRelevance(list(range(5000)), labels.tolist())
    sampler = ReservoirTripletSampler(100, seed=1)
    triplets = list(sampler.stream(source.items()))
    assert len(triplets) > 4900
    for q, p, n, out in triplets:
        assert q != p and labels[q] == labels[p] != labels[n] and out


def test_out_of_class_negatives_are_uniform_over_other_buffers():
    sampler = ReservoirTripletSampler(1000, seed=3)
    sizes = {0: 10, 1: 30, 2: 60}
    for c, size in sizes.items():
        for i in range(size):
            sampler.insert((c, i), c, 1.0)
    counts = {1: 0, 2: 0}
    n = 6000
    for _ in range(n):
        t = sampler.sample(0)
        counts[t.negative[0]] += 1
    assert _z_ok(counts[1] / n, 30 / 90, n) and _z_ok(counts[2] / n, 60 / 90, n)


def _graded_relevance(groups):
    """Pairwise relevance where images i, j of one category score 1/(1+|i-j|): every pair ordered."""
    return lambda a, b: 1.0 / (1.0 + abs(a[1] - b[1]))


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.7])
def test_out_of_class_fraction_holds(fraction):
    def pair(a, b):  # high acceptance, every pair ordered: no emission runs out of tries
        return 1.0 - abs(a[1] - b[1]) / 50.0

    sampler = ReservoirTripletSampler(
        200, pair_relevance=pair, out_of_class_fraction=fraction, max_tries=500, seed=11
    )
    # equal totals of 1: acceptance r/r_p = 1/(1+|i-j|) stays high, so no emission fails its tries
    for c in range(4):
        for i in range(40):
            sampler.insert((c, i), c, 1.0)
    n = 4000
    out = sum(sampler.sample(c % 4).out_of_class for c in range(n))
    assert _z_ok(out / n, fraction, n)


def test_positive_acceptance_follows_pairwise_relevance():
    """Given a query, accepted positives are distributed proportional to r(q, p) (min(1, r/r_p) rule)."""
    relevance = {frozenset((0, 1)): 3.0, frozenset((0, 2)): 1.0, frozenset((1, 2)): 1.0}
    totals = {0: 4.0, 1: 4.0, 2: 2.0}
    sampler = ReservoirTripletSampler(
        10, pair_relevance=lambda a, b: relevance[frozenset((a, b))], out_of_class_fraction=1.0, seed=5
    )
    for i in range(3):
        sampler.insert(i, "a", totals[i])
    sampler.insert("x", "b", 1.0)
    pairs = {}
    n = 30000
    for _ in range(n):
        t = sampler.sample("a")
        if t is not None:
            pairs[(t.query, t.positive)] = pairs.get((t.query, t.positive), 0) + 1
    # Query 0: positive 1 is accepted with r01/r_1 = 3/4, positive 2 with r02/r_2 = 1/2.
    # Buffer draws are uniform here (all in the buffer), so the ratio is (3/4) / (1/2) = 1.5.
    ratio = pairs[(0, 1)] / pairs[(0, 2)]
    assert abs(ratio - 1.5) < 0.15, ratio


def test_in_class_negatives_respect_the_relevance_margin():
    pair = _graded_relevance(None)
    sampler = ReservoirTripletSampler(
        100, pair_relevance=pair, out_of_class_fraction=0.0, relevance_margin=0.3, max_tries=1000, seed=2
    )
    for i in range(30):
        sampler.insert((0, i), 0, 1.0)
    found = 0
    for _ in range(500):
        t = sampler.sample(0)
        if t is None:
            continue
        found += 1
        assert not t.out_of_class
        assert pair(t.query, t.positive) - pair(t.query, t.negative) >= 0.3
    assert found > 400


def test_tries_limit_gives_up():
    # zero relevance everywhere: no positive can ever be accepted
    sampler = ReservoirTripletSampler(10, pair_relevance=lambda a, b: 0.0, max_tries=5, seed=0)
    for i in range(10):
        sampler.insert(i, 0, 1.0)
        sampler.insert(100 + i, 1, 1.0)
    assert sampler.sample(0) is None


def test_deterministic_under_seed_and_resumable():
    labels = np.random.default_rng(0).integers(0, 4, 3000).tolist()
    items = list(ClassRelevance(list(range(3000)), labels).items())
    a = list(ReservoirTripletSampler(64, seed=9).stream(items))
    b = list(ReservoirTripletSampler(64, seed=9).stream(items))
    c = list(ReservoirTripletSampler(64, seed=10).stream(items))
    assert a == b and a != c
    first = ReservoirTripletSampler(64, seed=9)
    head = list(first.stream(items[:1000]))
    resumed = ReservoirTripletSampler(64, seed=123)
    resumed.load_state_dict(first.state_dict())
    assert head + list(resumed.stream(items[1000:])) == a


def test_bad_arguments():
    with pytest.raises(ValueError, match="capacity"):
        ReservoirTripletSampler(1)
    with pytest.raises(ValueError, match="out_of_class_fraction"):
        ReservoirTripletSampler(10, out_of_class_fraction=1.5)
    sampler = ReservoirTripletSampler(10)
    with pytest.raises(ValueError, match="relevance"):
        sampler.insert("a", 0, float("nan"))
    with pytest.raises(ValueError, match="relevance"):
        sampler.insert("a", 0, -1.0)
