"""deeprank: fine-grained image similarity and search by example.

An implementation of "Learning Fine-grained Image Similarity with Deep Ranking" (Wang et al.,
CVPR 2014) with a C++/CUDA core: a fused triplet ranking loss, local response normalization and
exact batched top-K search, plus the multiscale network, online triplet sampling, training,
indexing, evaluation and a command line.

``import deeprank`` imports torch: the ops are torch ops, and every model is a torch module.
"""

from __future__ import annotations

from . import nn
from ._build import build_info, get_num_threads, set_num_threads
from ._version import __version__
from .index import FlatIndex, Index
from .ops import lrn, topk, triplet_loss

__all__ = [
    "__version__",
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
