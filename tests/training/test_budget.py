"""Budget and learning-rate schedule (deeprank.training.budget) against their formulas."""

import math

import pytest

from deeprank.training import TrainConfig
from deeprank.training.budget import budget_fraction, learning_rate


def test_the_budget_closest_to_its_end_decides():
    config = TrainConfig(max_steps=10, max_triplets=1000, epochs=2.0, time_budget=60.0)
    assert budget_fraction(config, 5, 100, 0.2, 6.0) == 0.5  # steps lead
    assert budget_fraction(config, 1, 900, 0.2, 6.0) == 0.9  # triplets lead
    assert budget_fraction(config, 1, 100, 1.5, 6.0) == 0.75  # epochs lead
    assert budget_fraction(config, 1, 100, 0.2, 90.0) == 1.5  # time ran out (past the end)
    only_time = TrainConfig(time_budget=10.0)
    assert budget_fraction(only_time, 10**6, 10**9, 50.0, 2.5) == 0.25  # unset budgets do not count


def test_without_a_budget_one_epoch():
    assert budget_fraction(TrainConfig(), 123, 4567, 0.3, 999.0) == 0.3
    assert budget_fraction(TrainConfig(), 123, 4567, 1.0, 999.0) == 1.0


@pytest.mark.parametrize(
    "step, fraction", [(0, 0.0), (1, 0.1), (3, 0.3), (4, 0.5), (9, 0.9), (20, 1.0), (21, 1.7)]
)
def test_cosine_with_warmup_follows_its_formula(step, fraction):
    config = TrainConfig(lr=0.2, warmup_steps=4, schedule="cosine")
    expected = 0.2 * (1 + math.cos(math.pi * min(fraction, 1.0))) / 2 * min(1.0, (step + 1) / 4)
    assert learning_rate(config, step, fraction) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_constant_schedule_and_no_warmup():
    assert learning_rate(TrainConfig(lr=0.3, schedule="constant", warmup_steps=0), 0, 0.99) == 0.3
    assert learning_rate(TrainConfig(lr=0.3, schedule="constant", warmup_steps=10), 4, 0.5) == pytest.approx(
        0.15
    )
    assert learning_rate(TrainConfig(lr=0.3, warmup_steps=0), 0, 0.0) == 0.3  # cosine starts at lr
    assert learning_rate(TrainConfig(lr=0.3, warmup_steps=0), 50, 1.0) == pytest.approx(0.0, abs=1e-15)
