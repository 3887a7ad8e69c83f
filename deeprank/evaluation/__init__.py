"""Evaluation: the paper's similarity precision and score-at-top-K, retrieval metrics, reports, figures.

- :mod:`.metrics`: every metric, from embeddings (queries, references, labels, triplets).
- :mod:`.neighbours`: the one blocked neighbour search; :mod:`.accumulators`: the metrics that consume
  its blocks, so one search of a collection serves them all.
- :mod:`.triplets`: labelled triplets sampled from class labels or written for a folder.
- :mod:`.methods`: one table row per method; the hand-crafted baselines.
- :mod:`.report`: ``results.md`` / ``results.json``; :mod:`.plots`: heat-map and result grids.
- :mod:`.folder`: :func:`evaluate_folder`, the whole evaluation of a model on a labelled folder.
"""

from __future__ import annotations

from .folder import evaluate_folder
from .methods import baseline_embedders, evaluate_embeddings, evaluate_methods
from .metrics import (
    crop_retrieval,
    retrieval_metrics,
    score_at_top_k,
    similarity_precision,
    triplet_distances,
    triplet_ranks,
)
from .report import results_markdown, write_results
from .triplets import sample_labelled_triplets, triplets_for_each_query, write_folder_triplets

__all__ = [
    "baseline_embedders",
    "crop_retrieval",
    "evaluate_embeddings",
    "evaluate_folder",
    "evaluate_methods",
    "results_markdown",
    "retrieval_metrics",
    "sample_labelled_triplets",
    "score_at_top_k",
    "similarity_precision",
    "triplet_distances",
    "triplet_ranks",
    "triplets_for_each_query",
    "write_folder_triplets",
    "write_results",
]
