"""Training: Algorithm 1's triplet sampling, in-batch mining, the loop, its configuration and resume.

- :mod:`.config`: :class:`TrainConfig` and the ``deeprank train`` flags generated from it.
- :mod:`.sampler`: :class:`ReservoirTripletSampler` (supplement Algorithm 1).
- :mod:`.relevance`: class labels, score tables and the golden feature as relevance.
- :mod:`.sources`: one resumable triplet source per input kind, each yielding a :class:`Batch`.
- :mod:`.mining`: batch-all and semi-hard in-batch mining.
- :mod:`.budget`: how much of the budget is spent, and the learning-rate schedule.
- :mod:`.state`: what a checkpoint keeps for resume, and how a resumed run is rebuilt.
- :mod:`.loop`: :class:`Trainer` (one optimisation step) and :func:`train` (the run).
- :mod:`.monitor`: what a run reports: :mod:`.logbook` (``RUN/log.jsonl``, TensorBoard) and
  :mod:`.validation` (every ``val_every`` steps, the best model in ``RUN/best``).
"""

from __future__ import annotations

from .config import TrainConfig
from .loop import default_max_shift, train

__all__ = ["TrainConfig", "default_max_shift", "train"]
