"""What a training run reports as it goes: the step log, TensorBoard and periodic validation.

:class:`RunMonitor` is the loop's one handle on :mod:`deeprank.training.logbook` (``RUN/log.jsonl``)
and :mod:`deeprank.training.validation` (every ``val_every`` steps, best checkpoint in ``RUN/best``).
In a distributed run only rank 0 (``trainer.world.is_main``) logs and validates; the other ranks wait
for it at the next step's collectives.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ..models.checkpoint import CONFIG_FILE
from .logbook import Logbook
from .validation import BEST_DIR, SCORE, Validator

__all__ = ["RunMonitor"]


def _best_so_far(log: Logbook, trainer: Any) -> float | None:
    """The score to beat: the best validation kept in the log, or of the model in ``RUN/best`` when a
    resumed run's last session saved it after its last checkpoint (its log line is dropped)."""
    scores = [log.best(SCORE)]
    best = Path(trainer.config.output) / BEST_DIR / CONFIG_FILE
    if trainer.counters.step > 0 and best.is_file():  # resumed: RUN/best is this run's
        with contextlib.suppress(ValueError, KeyError, TypeError):  # unreadable: the log's best stands
            scores.append(json.loads(best.read_text())["validation"][SCORE])
    found = [s for s in scores if isinstance(s, (int, float))]
    return max(found) if found else None


class RunMonitor:
    """The log and validation of one training session (module docstring)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.log: Logbook | None = None
        self.validator: Validator | None = None
        world = getattr(trainer, "world", None)
        if world is not None and not world.is_main:
            return
        config = trainer.config
        self.log = Logbook(config.output, trainer.counters.step, tensorboard=config.tensorboard)
        if config.val_every:
            self.validator = Validator(trainer, _best_so_far(self.log, trainer))

    def after_step(self, stats: Any, rate: float, elapsed: float) -> None:
        """Log the step just taken (and validate when due)."""
        if self.log is None:
            return
        c = self.trainer.counters
        values = {
            "loss": stats.loss,
            "lr": stats.lr,
            "triplets": c.triplets,
            "triplets_per_s": rate,
            "active_fraction": stats.active_fraction,
            "elapsed_s": elapsed,
        }
        self.log.write("train", c.step, values)
        if self.validator is not None and self.validator.due(c.step):
            self.log.write("val", c.step, self.validator.run(self.trainer))

    def checkpointed(self) -> None:
        """The run was checkpointed: flush the log to disk with it."""
        if self.log is not None:
            self.log.sync()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
