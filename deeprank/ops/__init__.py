"""The compiled ops behind a thin torch/numpy layer: exact top-K search, the triplet loss, LRN.

- :func:`topk` (:mod:`.topk`): exact k nearest neighbours by squared Euclidean distance, numpy or
  torch in, CPU kernels of ``deeprank._C`` or the CUDA module.
- :func:`triplet_loss` (:mod:`.triplet`) and :func:`lrn` (:mod:`.lrn`): ``torch.library`` custom ops
  (``torch.ops.deeprank.*``) with autograd and fake kernels.
- :mod:`.reference`: the one pure numpy/torch reference of each op (tests compare against it).
- :mod:`.checks`: the argument checks of the public ops; :mod:`.cuda`: the CUDA entry points.
"""

from __future__ import annotations

from .lrn import lrn
from .topk import topk
from .triplet import triplet_loss

__all__ = ["lrn", "topk", "triplet_loss"]
