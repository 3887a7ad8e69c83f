"""How far a run is through its budget, and the learning rate that follows from it.

The budget is the first of ``max_steps``, ``max_triplets``, ``epochs`` and ``time_budget`` to run
out (one epoch when none is set); the cosine schedule spans that whole budget, so a run stopped
early (``stop_at_step``) and resumed follows the same curve as an uninterrupted one.
"""

from __future__ import annotations

import math

from .config import TrainConfig

__all__ = ["budget_fraction", "learning_rate"]


def budget_fraction(config: TrainConfig, step: int, triplets: int, epoch: float, elapsed: float) -> float:
    """The share of the budget spent (``>= 1``: the run is over), by the budget closest to its end."""
    fractions = []
    if config.max_steps:
        fractions.append(step / config.max_steps)
    if config.max_triplets:
        fractions.append(triplets / config.max_triplets)
    if config.epochs:
        fractions.append(epoch / config.epochs)
    if config.time_budget:
        fractions.append(elapsed / config.time_budget)
    if not fractions:
        fractions.append(epoch)  # default budget: one epoch
    return max(fractions)


def learning_rate(config: TrainConfig, step: int, fraction: float) -> float:
    """The learning rate of step ``step`` (0-based) at budget ``fraction``: cosine or constant, warmed up.

    Cosine: ``lr * (1 + cos(pi * fraction)) / 2``, from ``lr`` to 0 over the budget; the first
    ``warmup_steps`` steps scale it linearly by ``(step + 1) / warmup_steps``.
    """
    lr = config.lr
    if config.schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))
    if config.warmup_steps and step < config.warmup_steps:
        lr *= (step + 1) / config.warmup_steps
    return lr
