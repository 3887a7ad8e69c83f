"""Training: Algorithm 1's triplet sampling, in-batch mining, the loop, its configuration and resume.

- :mod:`.config`: :class:`TrainConfig` and the ``deeprank train`` flags.
- :mod:`.sampler`: :class:`ReservoirTripletSampler` (supplement Algorithm 1).
- :mod:`.relevance`: class labels, score tables and the golden feature as relevance.
- :mod:`.sources`: one resumable triplet source per input kind.
- :mod:`.mining`: batch-all and semi-hard in-batch mining.
- :mod:`.loop`: :func:`train`.
"""

from __future__ import annotations

from .config import TrainConfig
from .loop import default_max_shift, train

__all__ = ["TrainConfig", "default_max_shift", "train"]
