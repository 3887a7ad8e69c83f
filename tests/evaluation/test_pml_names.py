"""The metrics named after pytorch-metric-learning's AccuracyCalculator give its values."""

import numpy as np
import pytest
import torch

from deeprank.evaluation import retrieval_metrics

pml = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")

SHARED = ("precision_at_1", "r_precision", "mean_average_precision_at_r", "mean_reciprocal_rank")


def _clustered(rng, n, classes, d=6, spread=1.2):
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d))
    return (centres[labels] + rng.normal(0, spread, (n, d))).astype(np.float32), labels


def _pml(query, query_labels, reference=None, reference_labels=None):
    # k="max_bin_count": the reciprocal rank looks as deep as the largest class, as ours does.
    calc = pml.AccuracyCalculator(include=SHARED, k="max_bin_count", device=torch.device("cpu"))
    args = [torch.from_numpy(query), torch.from_numpy(query_labels)]
    if reference is not None:
        args += [torch.from_numpy(reference), torch.from_numpy(reference_labels)]
    return calc.get_accuracy(*args, ref_includes_query=reference is None)


@pytest.mark.parametrize("n, classes", [(60, 3), (157, 7), (200, 20)])
def test_same_values_as_pml_with_the_collection_as_its_own_queries(rng, n, classes):
    e, labels = _clustered(rng, n, classes)
    ours = retrieval_metrics(e, labels, e, labels, ks=(1,), exclude_self=True)
    theirs = _pml(e, labels)
    for name in SHARED:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), name


def test_same_values_as_pml_with_separate_queries(rng):
    ref, ref_labels = _clustered(rng, 180, 6)
    queries, query_labels = _clustered(rng, 70, 6)
    query_labels[:6] = np.arange(6)  # every label among the queries (PML's k is the largest class)
    ours = retrieval_metrics(queries, query_labels, ref, ref_labels, ks=(1,))
    theirs = _pml(queries, query_labels, ref, ref_labels)
    for name in SHARED:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), name
