"""deeprank: fine-grained image similarity and search by example.

An implementation of "Learning Fine-grained Image Similarity with Deep Ranking" (Wang et al.,
CVPR 2014) with a C++/CUDA core: a fused triplet ranking loss, local response normalization and
exact batched top-K search, plus the multiscale network, online triplet sampling, training,
indexing, evaluation and a command line.

``import deeprank`` imports torch: the ops are torch ops, and every model is a torch module. The
command line's calls, :func:`train`, :func:`embed` and :func:`evaluate` (:mod:`deeprank.api`), and
:class:`TrainConfig` are imported on first use, so ``import deeprank`` does not load training or
evaluation code.
"""

from __future__ import annotations

from . import nn
from ._build import build_info, get_num_threads, set_num_threads
from ._version import __version__
from .index import FlatIndex, Index
from .ops import lrn, topk, triplet_loss

_LAZY = {"train": "api", "embed": "api", "evaluate": "api", "TrainConfig": "training"}


def __getattr__(name: str):
    """``deeprank.train`` / ``embed`` / ``evaluate`` / ``TrainConfig``, imported when first used."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deeprank' has no attribute {name!r}")


__all__ = [
    "__version__",
    "FlatIndex",
    "TrainConfig",
    "Index",
    "build_info",
    "embed",
    "evaluate",
    "get_num_threads",
    "lrn",
    "nn",
    "set_num_threads",
    "topk",
    "train",
    "triplet_loss",
]
