"""Online triplet sampling (supplement Algorithm 1).

:class:`ReservoirTripletSampler` streams ``(image_ref, category, total_relevance)`` items. It keeps one
fixed-capacity buffer per category, filled by weighted reservoir sampling (Efraimidis-Spirakis A-Res:
key ``u^(1/r)``, keep the largest keys), so uniform draws from a buffer are draws weighted by total
relevance. After each item it tries, up to ``max_tries`` times, to emit a triplet from the item's
buffer:

* query uniform from the buffer;
* positive uniform from the buffer, accepted with probability ``min(1, r(q, p) / r_p)``;
* negative: with probability ``out_of_class_fraction`` uniform over the images of all other buffers,
  otherwise in-class, drawn like the positive and accepted only when ``r(q, p) - r(q, n) >= T_r``
  (and ``r(q, p) > r(q, n)``, the ordering the loss needs).

The in-class/out-of-class choice is made once per emitted triplet (before the tries), so the
out-of-class fraction holds among the emitted triplets. A relevance source with no order inside a
category (class labels alone) makes every negative out-of-class.

Memory is the buffers (references, keys, relevances), whatever the size of the stream. Everything is
driven by one ``random.Random(seed)``, so a run repeats exactly and :meth:`state_dict` /
:meth:`load_state_dict` let training resume mid-stream.

Relevance sources are in :mod:`deeprank.training.relevance`.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

__all__ = ["RelevanceSource", "ReservoirTripletSampler", "Triplet"]


class Triplet(NamedTuple):
    """One sampled triplet of image references; ``out_of_class`` tells where the negative came from."""

    query: Any
    positive: Any
    negative: Any
    out_of_class: bool


class RelevanceSource(Protocol):
    """What the sampler needs from a relevance source (:mod:`deeprank.training.relevance`).

    Training builds the sampler with ``pair_relevance=source.pair`` and
    ``in_class_negatives=source.in_class_order``.
    """

    #: whether images of one category are ordered by relevance (in-class negatives possible)
    in_class_order: bool

    def pair(self, a: Any, b: Any) -> float:
        """Pairwise relevance ``r_ab`` of two images of the same category (higher = more similar)."""
        ...

    def items(self, order: Sequence[int] | None = None) -> Iterator[tuple[Any, Hashable, float]]:
        """The stream ``(image_ref, category, total_relevance)``, in ``order`` (default: reference order)."""
        ...


class _Buffer:
    """One category's reservoir: references, total relevances, log-keys and a min-heap of keys."""

    __slots__ = ("refs", "totals", "heap")

    def __init__(self) -> None:
        self.refs: list[Any] = []
        self.totals: list[float] = []
        self.heap: list[tuple[float, int]] = []  # (log key, slot); heap[0] is the smallest key

    def __len__(self) -> int:
        return len(self.refs)


class ReservoirTripletSampler:
    """Algorithm 1 of the Deep Ranking supplement: streaming triplets from per-category reservoirs.

    Args:
        capacity: images kept per category buffer.
        pair_relevance: ``f(a, b) -> r_ab`` for two references of one category; ``None`` means every
            in-class pair is equally relevant (``r_ab = 1``; class labels only).
        out_of_class_fraction: share of triplets whose negative comes from another category (paper's
            best: 0.2). Forced to 1 when ``in_class_negatives`` is false.
        relevance_margin: ``T_r``, the least ``r(q, p) - r(q, n)`` for an in-class negative.
        max_tries: attempts per streamed item before giving up on a triplet for it.
        in_class_negatives: whether in-class negatives can exist; default: ``pair_relevance is not None``.
        seed: seeds the sampler's own ``random.Random``.
    """

    def __init__(
        self,
        capacity: int = 1000,
        *,
        pair_relevance: Any = None,
        out_of_class_fraction: float = 0.2,
        relevance_margin: float = 0.0,
        max_tries: int = 32,
        in_class_negatives: bool | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(capacity, int) or capacity < 2:
            raise ValueError(f"capacity must be an int >= 2 (a query and a positive), got {capacity!r}")
        if not 0.0 <= out_of_class_fraction <= 1.0:
            raise ValueError(f"out_of_class_fraction must be in [0, 1], got {out_of_class_fraction}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        if relevance_margin < 0:
            raise ValueError(f"relevance_margin must be >= 0, got {relevance_margin}")
        self.capacity = capacity
        self.pair_relevance = pair_relevance
        self.in_class_negatives = (
            pair_relevance is not None if in_class_negatives is None else in_class_negatives
        )
        self.out_of_class_fraction = 1.0 if not self.in_class_negatives else float(out_of_class_fraction)
        self.relevance_margin = float(relevance_margin)
        self.max_tries = int(max_tries)
        self.rng = random.Random(seed)
        self.reset()

    # ----------------------------------------------------------------------------- buffers
    def reset(self) -> None:
        """Empty every buffer (the random state continues)."""
        self._buffers: dict[Hashable, _Buffer] = {}
        self._order: list[Hashable] = []  # categories in creation order, for out-of-class draws
        self._positions: dict[Hashable, int] = {}
        self._cumulative: list[int] | None = None
        self.seen = 0
        self.emitted = 0

    @property
    def categories(self) -> list[Hashable]:
        return list(self._order)

    def buffer(self, category: Hashable) -> list[Any]:
        """The references currently in ``category``'s buffer (a copy)."""
        buf = self._buffers.get(category)
        return list(buf.refs) if buf is not None else []

    def __len__(self) -> int:
        """Images held in all buffers."""
        return sum(len(b) for b in self._buffers.values())

    def insert(self, ref: Any, category: Hashable, relevance: float) -> bool:
        """Offer one image to its category's reservoir (lines 5-17); returns whether it was kept."""
        if not relevance >= 0.0 or math.isinf(relevance):  # also rejects NaN
            raise ValueError(f"total relevance of {ref!r} must be finite and >= 0, got {relevance}")
        buf = self._buffers.get(category)
        if buf is None:
            buf = self._buffers[category] = _Buffer()
            self._positions[category] = len(self._order)
            self._order.append(category)
        u = self.rng.random()
        # log(u^(1/r)) = log(u)/r: same order as the keys, no underflow for large r.
        key = -math.inf if relevance == 0.0 or u == 0.0 else math.log(u) / relevance
        self.seen += 1
        if len(buf) < self.capacity:
            buf.refs.append(ref)
            buf.totals.append(float(relevance))
            heapq.heappush(buf.heap, (key, len(buf.refs) - 1))
            self._cumulative = None
            return True
        if key > buf.heap[0][0]:
            slot = buf.heap[0][1]
            heapq.heapreplace(buf.heap, (key, slot))
            buf.refs[slot] = ref
            buf.totals[slot] = float(relevance)
            return True
        return False

    # ----------------------------------------------------------------------------- triplets
    def _relevance(self, a: Any, b: Any) -> float:
        return 1.0 if self.pair_relevance is None else float(self.pair_relevance(a, b))

    def _accept(self, r_pair: float, total: float) -> bool:
        if total <= 0.0 or r_pair <= 0.0:
            return False
        ratio = r_pair / total
        return ratio >= 1.0 or self.rng.random() < ratio

    def _other_image(self, category: Hashable) -> Any:
        """Uniform over the images of every buffer but ``category``'s, or ``None`` if there are none."""
        if self._cumulative is None:
            total, cumulative = 0, []
            for c in self._order:
                total += len(self._buffers[c])
                cumulative.append(total)
            self._cumulative = cumulative
        cumulative = self._cumulative
        position = self._positions[category]
        own = len(self._buffers[category])
        before = cumulative[position] - own
        others = cumulative[-1] - own
        if others <= 0:
            return None
        r = self.rng.randrange(others)
        if r >= before:
            r += own
        which = bisect.bisect_right(cumulative, r)
        buf = self._buffers[self._order[which]]
        return buf.refs[r - (cumulative[which] - len(buf))]

    def sample(self, category: Hashable) -> Triplet | None:
        """Try to emit one triplet from ``category``'s buffer (lines 18-36); ``None`` if all tries fail."""
        buf = self._buffers.get(category)
        if buf is None or len(buf) < 2:
            return None
        rng = self.rng
        out_of_class = self.out_of_class_fraction >= 1.0 or rng.random() < self.out_of_class_fraction
        if out_of_class and len(self._order) < 2:
            return None
        refs, totals, size = buf.refs, buf.totals, len(buf)
        for _ in range(self.max_tries):
            i, j = rng.randrange(size), rng.randrange(size)
            if i == j:
                continue
            r_pos = self._relevance(refs[i], refs[j])
            if not self._accept(r_pos, totals[j]):
                continue
            if out_of_class:
                negative = self._other_image(category)
                if negative is None:
                    return None
            else:
                k = rng.randrange(size)
                if k in (i, j):
                    continue
                r_neg = self._relevance(refs[i], refs[k])
                if not self._accept(r_neg, totals[k]):
                    continue
                gap = r_pos - r_neg
                if gap <= 0.0 or gap < self.relevance_margin:
                    continue
                negative = refs[k]
            self.emitted += 1
            return Triplet(refs[i], refs[j], negative, out_of_class)
        return None

    def add(self, ref: Any, category: Hashable, relevance: float = 1.0) -> Triplet | None:
        """One step of Algorithm 1: insert the image, then try to emit a triplet from its buffer."""
        self.insert(ref, category, relevance)
        return self.sample(category)

    def stream(self, items: Iterable[tuple[Any, Hashable, float]]) -> Iterator[Triplet]:
        """Run Algorithm 1 over ``items`` (``(image_ref, category, total_relevance)``), yielding triplets."""
        for ref, category, relevance in items:
            triplet = self.add(ref, category, relevance)
            if triplet is not None:
                yield triplet

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the stream exactly (buffers and the random state)."""
        return {
            "buffers": [
                (c, list(b.refs), list(b.totals), list(b.heap))
                for c, b in ((c, self._buffers[c]) for c in self._order)
            ],
            "rng": self.rng.getstate(),
            "seen": self.seen,
            "emitted": self.emitted,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reset()
        for category, refs, totals, heap in state["buffers"]:
            buf = _Buffer()
            buf.refs, buf.totals, buf.heap = list(refs), list(totals), [tuple(h) for h in heap]
            self._buffers[category] = buf
            self._positions[category] = len(self._order)
            self._order.append(category)
        self.rng.setstate(_as_rng_state(state["rng"]))
        self.seen, self.emitted = int(state["seen"]), int(state["emitted"])


def _as_rng_state(state: Any) -> tuple:
    # torch.save round-trips tuples, but JSON or other containers may turn them into lists.
    version, internal, gauss = state
    return (int(version), tuple(int(v) for v in internal), gauss)
