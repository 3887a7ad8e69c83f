"""Relevance sources for Algorithm 1: what makes two images of one category more or less similar.

* :class:`ClassRelevance`: class labels alone (every in-class pair equally relevant);
* :class:`TableRelevance`: a user's table of pairwise scores (CSV ``image_a,image_b,score``);
* :class:`GoldenRelevance`: the paper's "golden feature", a weighted mix of hand-crafted feature
  distances (:mod:`deeprank.features`).

:func:`build_relevance` makes the source a training configuration asks for.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.store import ImageStore
from ..features import DISTANCES, color_histogram, hog, wavelet
from .config import TrainConfig

__all__ = ["ClassRelevance", "GoldenRelevance", "TableRelevance", "build_relevance", "golden_relevance"]


class ClassRelevance:
    """Class labels alone: every pair inside a category is equally relevant.

    All total relevances are equal, so the reservoirs are uniform samples and positives are always
    accepted; there is no order inside a category, so negatives are out-of-class.
    """

    in_class_order = False

    def __init__(self, refs: Sequence[Any], labels: Sequence[Hashable]) -> None:
        if len(refs) != len(labels):
            raise ValueError(f"refs and labels must have the same length, got {len(refs)} and {len(labels)}")
        self.refs, self.labels = list(refs), list(labels)

    def pair(self, a: Any, b: Any) -> float:
        return 1.0

    def items(self, order: Sequence[int] | None = None) -> Iterator[tuple[Any, Hashable, float]]:
        for i in range(len(self.refs)) if order is None else order:
            yield self.refs[i], self.labels[i], 1.0


class TableRelevance:
    """A user's table of pairwise scores ``r_ab`` (symmetric; missing pairs score 0).

    ``categories`` maps each reference to its category; without it all images share one category.
    Pairs across categories are ignored (relevance is 0 across categories). Total relevance
    ``r_a = sum_b r_ab`` over ``a``'s category.
    """

    in_class_order = True

    def __init__(
        self, scores: Mapping[tuple[Any, Any], float], categories: Mapping[Any, Hashable] | None = None
    ) -> None:
        self._scores: dict[tuple[Any, Any], float] = {}
        totals: dict[Any, float] = {}
        for (a, b), value in scores.items():
            value = float(value)
            if not value >= 0.0 or math.isinf(value):
                raise ValueError(f"score of ({a!r}, {b!r}) must be finite and >= 0, got {value}")
            if a == b:
                continue
            if categories is not None and categories.get(a) != categories.get(b):
                continue
            key = (a, b) if str(a) <= str(b) else (b, a)
            if key in self._scores:
                continue  # the first of (a, b) / (b, a) wins
            self._scores[key] = value
            totals[a] = totals.get(a, 0.0) + value
            totals[b] = totals.get(b, 0.0) + value
        refs = set(totals)
        if categories is not None:
            refs |= set(categories)
        self.refs = sorted(refs, key=str)
        self.totals = {r: totals.get(r, 0.0) for r in self.refs}
        self.categories = {
            r: (categories[r] if categories is not None and r in categories else 0) for r in self.refs
        }

    @classmethod
    def from_csv(cls, path: str | Path, categories: Mapping[Any, Hashable] | None = None) -> TableRelevance:
        """Read rows ``a,b,score`` (header optional). Image names are kept as written (strings)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"relevance table not found: {path}")
        scores: dict[tuple[str, str], float] = {}
        with path.open(newline="", encoding="utf-8-sig") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if not any(c.strip() for c in row):
                    continue
                if len(row) != 3:
                    raise ValueError(f"{path}:{line}: expected image_a,image_b,score, got {row}")
                a, b, value = (c.strip() for c in row)
                try:
                    score = float(value)
                except ValueError:
                    if line == 1:
                        continue  # header
                    raise ValueError(f"{path}:{line}: score {value!r} is not a number") from None
                scores[(a, b)] = score
        return cls(scores, categories)

    def pair(self, a: Any, b: Any) -> float:
        key = (a, b) if str(a) <= str(b) else (b, a)
        return self._scores.get(key, 0.0)

    def items(self, order: Sequence[int] | None = None) -> Iterator[tuple[Any, Hashable, float]]:
        for i in range(len(self.refs)) if order is None else order:
            ref = self.refs[i]
            yield ref, self.categories[ref], self.totals[ref]


class GoldenRelevance:
    """The paper's "golden feature": relevance from a weighted mix of hand-crafted feature distances.

    ``r_ab = exp(-sum_k w_k d_k(a, b) / s_k)`` where ``d_k`` is feature ``k``'s distance
    (:data:`deeprank.features.DISTANCES`) and ``s_k`` its median over sampled in-class pairs, so the
    weights ``w_k`` compare like with like. References are integer indices into the feature arrays.
    Total relevances are computed per category in blocks (vectorised; cost ``O(n_c^2)`` per category).

    Args:
        features: ``{name: float32 [N, F]}``, names from ``deeprank.features`` (``"color"``, ``"hog"``,
            ``"wavelet"``).
        labels: category of each image (``[N]``); ``None``: one category.
        weights: ``{name: w}``; default equal weights.
    """

    in_class_order = True

    def __init__(
        self,
        features: Mapping[str, np.ndarray],
        labels: Sequence[Hashable] | np.ndarray | None = None,
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        if not features:
            raise ValueError("features must name at least one feature array")
        sizes = {name: np.asarray(f).shape[0] for name, f in features.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"feature arrays must have the same number of rows, got {sizes}")
        n = next(iter(sizes.values()))
        for name in features:
            if name not in DISTANCES:
                raise ValueError(f"unknown feature {name!r}; expected one of {sorted(DISTANCES)}")
        self.features = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in features.items()}
        self.labels = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels)
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be [N] = [{n}], got {self.labels.shape}")
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in self.features}
        rng = np.random.default_rng(seed)
        self.scales: dict[str, float] = {}
        a, b = rng.integers(0, n, 2048), rng.integers(0, n, 2048)
        same = (self.labels[a] == self.labels[b]) & (a != b)
        a, b = (a[same], b[same]) if same.any() else (a, b)
        for name, feats in self.features.items():
            d = DISTANCES[name](feats[a], feats[b], paired=True)
            positive = d[d > 0]
            self.scales[name] = float(np.median(positive)) if positive.size else 1.0
        self.totals = self._total_relevance()

    def _mix(self, rows: Any, cols: Any, paired: bool) -> np.ndarray:
        """``sum_k w_k d_k / s_k`` for all row x col pairs (or row by row with ``paired``)."""
        mix = 0.0
        for name, feats in self.features.items():
            d = DISTANCES[name](feats[rows], feats[cols], paired=paired)
            mix = mix + self.weights[name] * np.asarray(d, dtype=np.float64) / self.scales[name]
        return mix

    def _total_relevance(self, block: int = 1024) -> np.ndarray:
        totals = np.zeros(len(self.labels), dtype=np.float64)
        for category in np.unique(self.labels):
            members = np.flatnonzero(self.labels == category)
            for start in range(0, len(members), block):
                rows = members[start : start + block]
                r = np.exp(-self._mix(rows, members, paired=False))
                # remove each row's self-pair (distance 0, relevance 1)
                totals[rows] = np.maximum(r.sum(axis=1) - 1.0, 0.0)
        return totals

    def pair(self, a: int, b: int) -> float:
        """``r_ab`` for two row indices (the sampler calls this per try: two vectors, no matrices)."""
        return math.exp(-float(self._mix(a, b, paired=True)))

    def items(self, order: Sequence[int] | None = None) -> Iterator[tuple[int, Hashable, float]]:
        for i in range(len(self.labels)) if order is None else order:
            yield int(i), self.labels[i].item(), float(self.totals[i])


def build_relevance(
    config: TrainConfig, refs: list[int], labels: np.ndarray, images: Any, folder: Any
) -> Any:
    """The relevance source ``config.relevance`` names: labels, ``"golden"`` or a score table CSV."""
    if config.relevance is None or config.relevance == "labels":
        return ClassRelevance(refs, labels.tolist())
    if config.relevance == "golden":
        if isinstance(images, ImageStore):
            images = torch.stack([images.get(i) for i in range(len(images))])
        return golden_relevance(images, labels, seed=config.seed)
    if folder is None:
        raise ValueError("a relevance table needs an image folder (names in the table are relative paths)")
    names = {str(p.relative_to(folder.root)): i for i, p in enumerate(folder.paths)}
    table = TableRelevance.from_csv(config.relevance)
    unknown = [r for r in table.refs if r not in names]
    if unknown:
        raise ValueError(
            f"{config.relevance}: {len(unknown)} image names not in {folder.root}, e.g. {unknown[0]!r}"
        )
    scores = {(names[a], names[b]): table.pair(a, b) for a, b in table._scores}
    indexed = TableRelevance(scores, {i: int(labels[i]) for i in range(len(labels))})
    indexed.totals = np.asarray([indexed.totals.get(i, 0.0) for i in range(len(labels))])  # type: ignore[assignment]
    return indexed


def golden_relevance(
    images: np.ndarray | torch.Tensor,
    labels: Sequence | np.ndarray | None = None,
    weights: dict[str, float] | None = None,
    seed: int = 0,
) -> GoldenRelevance:
    """The golden-feature relevance of ``images``: their colour, HOG and wavelet features, mixed.

    References of the returned :class:`GoldenRelevance` are row indices of ``images``.
    """
    computed = {"color": color_histogram, "hog": hog, "wavelet": wavelet}
    if weights is not None:
        computed = {k: f for k, f in computed.items() if weights.get(k, 0.0) > 0}
    return GoldenRelevance({k: f(images) for k, f in computed.items()}, labels, weights, seed=seed)
