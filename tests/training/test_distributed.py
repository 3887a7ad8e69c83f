"""deeprank.training.distributed and .rankstate without processes: world detection, per-rank
sampling shards, seeds, and the per-rank state files (the collectives are in the 2-rank tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deeprank.data.images import SkippedImages
from deeprank.training import TrainConfig
from deeprank.training.distributed import (
    DEFAULT_TIMEOUT_S,
    DistributedError,
    World,
    detect_world,
    rank_seed,
    shard_source,
    timeout_seconds,
)
from deeprank.training.rankstate import decode, encode, load_rank_state, rank_file, save_rank_state
from deeprank.training.relevance import TableRelevance
from deeprank.training.sources import EpochOrder, SampledSource


def test_the_world_comes_from_torchruns_variables():
    assert detect_world({}) == World(0, 1, 0) and not World().distributed
    world = detect_world({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert world == World(3, 4, 1) and world.distributed and not world.is_main
    with pytest.raises(DistributedError, match="RANK is not set"):
        detect_world({"WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="RANK must be an integer, got 'x'"):
        detect_world({"WORLD_SIZE": "2", "RANK": "x"})
    with pytest.raises(DistributedError, match="0 <= RANK < WORLD_SIZE"):
        detect_world({"WORLD_SIZE": "2", "RANK": "2"})


def test_the_timeout_is_stated_and_checked():
    assert timeout_seconds({}) == DEFAULT_TIMEOUT_S == 300.0
    assert timeout_seconds({"DEEPRANK_DIST_TIMEOUT": "7.5"}) == 7.5
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(DistributedError, match="DEEPRANK_DIST_TIMEOUT must be a positive number"):
            timeout_seconds({"DEEPRANK_DIST_TIMEOUT": bad})


def test_rank_zero_keeps_the_seed_and_other_ranks_get_their_own():
    assert rank_seed(5, 0) == 5
    seeds = {rank_seed(5, r) for r in range(1, 8)} | {rank_seed(5, 0, restart_step=10)}
    assert len(seeds) == 8 and 5 not in seeds


def _source(world: World, size: int = 240, categories: int = 24, share: float = 0.2) -> SampledSource:
    """Real Algorithm 1 over a score table with an order inside each category (in-class negatives)."""
    rng = np.random.default_rng(0)
    labels = np.arange(size) % categories
    scores = {}
    for i in range(size):
        for j in np.flatnonzero(labels == labels[i]):
            if i < j:
                scores[(i, int(j))] = float(rng.uniform(0.1, 1.0))
    relevance = TableRelevance(scores, {i: int(labels[i]) for i in range(size)})
    relevance.totals = np.asarray([relevance.totals.get(i, 0.0) for i in range(size)])  # as build_relevance
    config = TrainConfig(buffer_capacity=8, out_of_class_fraction=share)
    images = torch.zeros(size, 1, 4, 4, dtype=torch.uint8)
    source = SampledSource(images, labels, relevance, config, SkippedImages(), {})
    return shard_source(source, world, config.seed) if world.distributed else source


def _draws(source: SampledSource, passes: int) -> list[tuple[int, tuple[int, int, int]]]:
    """(pass, triplet) for every triplet emitted in the first ``passes`` passes."""
    out = []
    while True:
        (t,) = source.refill(1)
        if source.walk.epoch >= passes:
            return out
        out.append((source.walk.epoch, t))


def test_each_rank_draws_only_from_its_own_shard_of_each_pass():
    ranks = [_source(World(r, 2)) for r in range(2)]
    draws = [_draws(s, passes=3) for s in ranks]
    order = EpochOrder(240, 1)  # the pass order every rank shares (seed + 1)
    for e in range(3):
        images = [{i for p, t in d if p == e for i in t} for d in draws]
        assert images[0] and images[1]
        assert not images[0] & images[1], f"an image drawn by both ranks in pass {e}"
        shards = [set(order.order[r::2].tolist()) for r in range(2)]
        assert images[0] <= shards[0] and images[1] <= shards[1]
        assert shards[0] | shards[1] == set(range(240))
        order.position = order.size
        order.next()  # on to the next pass's permutation


@pytest.mark.parametrize("share", [0.2, 0.6])
def test_the_out_of_class_fraction_over_all_ranks_is_that_of_one_process(share):
    # 12 categories of 20: each rank's shard of a pass (10 per category) fills its 8-image buffers,
    # as one process's do; with shards smaller than the buffers, per-rank buffers hold fewer
    # candidates and in-class negatives (three distinct images) get rarer.
    labels = np.arange(240) % 12

    def fraction(triplets):
        return float(np.mean([labels[q] != labels[n] for q, _, n in triplets]))

    two = [
        t for r in range(2) for _, t in _draws(_source(World(r, 2), categories=12, share=share), passes=30)
    ]
    one = [t for _, t in _draws(_source(World(), categories=12, share=share), passes=30)]
    assert len(two) > 700 and len(one) > 700
    # Binomial standard deviation of the difference about 0.015. Both are above ``share``: an
    # in-class negative must pass two acceptance draws and the relevance gap, so in-class attempts
    # fail more often and the emitted triplets lean out-of-class (Algorithm 1 as written; the same
    # on one process).
    assert abs(fraction(two) - fraction(one)) < 0.05
    assert share < fraction(one) < 1.0


def test_one_rank_of_one_is_the_one_process_order_and_a_shard_resumes_exactly():
    alone, sharded = EpochOrder(10, 3), shard_source(_source(World()), World(0, 1), 0).walk
    plain = EpochOrder(240, 1)
    assert [sharded.next() for _ in range(500)] == [plain.next() for _ in range(500)]
    assert alone.size == 10
    walk = _source(World(1, 2)).walk
    for _ in range(130):
        walk.next()
    state = walk.state_dict()
    again = _source(World(1, 2)).walk
    again.load_state_dict(decode(json.loads(json.dumps(encode(state)))))
    assert [again.next() for _ in range(300)] == [walk.next() for _ in range(300)]


def test_more_ranks_than_items_is_refused():
    with pytest.raises(ValueError, match="fewer than the 300 ranks"):
        shard_source(_source(World(0, 1)), World(0, 300), 0)


def test_rank_state_files_are_plain_json_and_round_trip(tmp_path):
    source = _source(World(1, 2))
    source.refill(40)
    state = {
        "source": source.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "loss": float("nan"),
        "none": None,
    }
    path = save_rank_state(tmp_path, 1, 2, 17, state)
    assert path == rank_file(tmp_path, 1) and path.name == "rank-1.json"
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    back = load_rank_state(tmp_path, 1)
    assert (back["world_size"], back["step"]) == (2, 17)
    assert torch.equal(back["state"]["torch_rng"], state["torch_rng"])
    assert np.isnan(back["state"]["loss"]) and back["state"]["none"] is None
    again = _source(World(1, 2))
    again.load_state_dict(back["state"]["source"])
    assert again.refill(50) == source.refill(50)
    assert load_rank_state(tmp_path, 0) is None  # absent
    rank_file(tmp_path, 0).write_text("{truncated")
    assert load_rank_state(tmp_path, 0) is None  # unreadable: resume restarts sampling instead
