"""deeprank: fine-grained image similarity and search by example.

An implementation of "Learning Fine-grained Image Similarity with Deep Ranking" (Wang et al.,
CVPR 2014) with a C++/CUDA core: a fused triplet ranking loss, local response normalization and
exact batched top-K search, plus the multiscale network, online triplet sampling, training,
indexing, evaluation and a command line.
"""

from __future__ import annotations

from typing import Any

from . import nn
from ._build import build_info, get_num_threads, set_num_threads
from ._ops import lrn, triplet_loss
from .search import FlatIndex, topk

__version__ = "0.1.0"

__all__ = [
    "FlatIndex",
    "Index",
    "build_info",
    "get_num_threads",
    "lrn",
    "nn",
    "set_num_threads",
    "topk",
    "triplet_loss",
]


def __getattr__(name: str) -> Any:
    # Heavier parts load on first use so `import deeprank` stays light.
    if name == "Index":
        from .index import Index

        return Index
    raise AttributeError(f"module 'deeprank' has no attribute {name!r}")
