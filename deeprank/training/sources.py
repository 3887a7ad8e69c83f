"""Triplet sources: the resumable producers of stacked ``[q; p; n]`` :class:`Batch` es, one per input kind.

* :class:`SampledSource`: labelled images (in memory or an :class:`~deeprank.data.ImageStore`)
  streamed through Algorithm 1 (:mod:`deeprank.training.sampler`);
* :class:`TripletListSource`: the fixed triplets of a CSV, shuffled each pass;
* :class:`InstanceSource`: an unlabelled folder, each image its own instance.

Labelled images (Fashion-MNIST, an image folder, ``hf:PATH``, WebDataset ``.tar`` shards) are opened in
one place, :func:`labelled_data`, for training and for validation alike.

:func:`build_source` picks and builds the source a :class:`~deeprank.training.config.TrainConfig` asks for.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..data.augment import augmented_view
from ..data.fashion_mnist import load_fashion_mnist
from ..data.folders import ImageFolder, UnlabelledFolder
from ..data.images import SkippedImages, UnreadableImage, resize
from ..data.record_specs import is_records_spec, open_records
from ..data.records import RecordStore
from ..data.store import ImageStore
from ..data.triplet_csv import read_triplet_csv
from ..errors import EmptyCollectionError
from .config import TrainConfig
from .relevance import build_relevance
from .sampler import ReservoirTripletSampler

__all__ = [
    "Batch",
    "EpochOrder",
    "InstanceSource",
    "SampledSource",
    "Source",
    "Labelled",
    "TripletListSource",
    "build_source",
    "data_kind",
    "held_out_split",
    "labelled_data",
    "spec_kind",
]

DATA_KINDS = ("fashion-mnist", "folder", "triplets", "unlabelled", "records")
FASHION_MNIST_MEAN = [0.2860]
FASHION_MNIST_STD = [0.3530]


class EpochOrder:
    """A fresh random permutation of ``range(size)`` per pass, walked one item at a time; resumable."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.order_rng = np.random.default_rng(seed)
        self.epoch, self.position = 0, 0
        self.order = self.order_rng.permutation(size)

    @property
    def epoch_float(self) -> float:
        return self.epoch + self.position / self.size

    def next(self) -> tuple[int, bool]:
        """The next item, and whether it starts a new pass."""
        new_pass = self.position >= self.size
        if new_pass:
            self.epoch, self.position = self.epoch + 1, 0
            self.order = self.order_rng.permutation(self.size)
        i = int(self.order[self.position])
        self.position += 1
        return i, new_pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "order_rng": self.order_rng.bit_generator.state,
            "epoch": self.epoch,
            "position": self.position,
            "order": self.order.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order_rng.bit_generator.state = state["order_rng"]
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.order = np.asarray(state["order"])


@dataclass(frozen=True)
class Batch:
    """One step's triplets: ``images`` stacked ``[q...; p...; n...]``, ``uint8 [3B, C, S, S]``.

    ``labels``: the category of each image (``long [3B]``) for in-batch mining, or ``None`` for a
    source without categories (a triplet CSV).
    """

    images: torch.Tensor
    labels: torch.Tensor | None

    @property
    def triplets(self) -> int:
        return self.images.shape[0] // 3


class Source:
    """A deterministic, resumable producer of triplet :class:`Batch` es."""

    size: int  # images (or triplets) per epoch, for the epoch budget
    walk: EpochOrder
    #: whether categories are the whole relevance (no order inside a category), so in-batch mining
    #: over categories loses nothing the sampled triplets carry
    categories_are_relevance: bool = False
    #: labelled images held out of training for validation (``val_fraction``), or None
    held_out: Any = None

    @property
    def epoch_float(self) -> float:
        return self.walk.epoch_float

    def next_batch(self, batch_size: int) -> Batch:
        """The next ``batch_size`` triplets."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}


class SampledSource(Source):
    """Labelled images (in memory or an :class:`ImageStore`) streamed through Algorithm 1."""

    def __init__(
        self,
        images: torch.Tensor | ImageStore,
        labels: np.ndarray,
        relevance: Any,
        config: TrainConfig,
        skipped: SkippedImages,
        description: dict[str, Any],
    ) -> None:
        self.images, self.labels = images, labels
        self.relevance = relevance
        self.skipped = skipped
        self.size = len(labels)
        self._description = description
        self.categories_are_relevance = not relevance.in_class_order
        self.sampler = ReservoirTripletSampler(
            config.buffer_capacity,
            pair_relevance=relevance.pair,
            in_class_negatives=relevance.in_class_order,
            out_of_class_fraction=config.out_of_class_fraction,
            relevance_margin=config.relevance_margin,
            max_tries=config.max_tries,
            seed=config.seed,
        )
        self.walk = EpochOrder(self.size, config.seed + 1)

    def _next_item(self) -> tuple[int, Hashable, float]:
        i, new_pass = self.walk.next()
        if new_pass:
            # Fresh buffers so late images of a pass get their turn (keys are per pass).
            self.sampler.reset()
        return i, self.labels[i].item(), self._total(i)

    def _total(self, i: int) -> float:
        totals = getattr(self.relevance, "totals", None)
        if totals is None:
            return 1.0
        return float(totals[i]) if isinstance(totals, np.ndarray) else float(totals[self.relevance.refs[i]])

    def refill(self, count: int) -> list[tuple[int, int, int]]:
        """The next ``count`` triplets of Algorithm 1 that touch no known-unreadable image."""
        bad = self.images.bad if isinstance(self.images, ImageStore) else ()
        out: list[tuple[int, int, int]] = []
        misses = 0
        while len(out) < count:
            t = self.sampler.add(*self._next_item())
            if t is None or (bad and {t.query, t.positive, t.negative} & bad):
                misses += 1
                if misses > 100 * count + 10 * self.size:
                    raise EmptyCollectionError(
                        "the sampler emits no triplets: check the categories and relevance"
                    )
                continue
            out.append((t.query, t.positive, t.negative))
        return out

    def next_batch(self, batch_size: int) -> Batch:
        triplets = self.refill(batch_size)
        images, triplets = _gather(self.images, triplets, self.skipped, self)
        index = torch.tensor(triplets, dtype=torch.long).t().reshape(-1)
        return Batch(images, torch.from_numpy(self.labels)[index])

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), **self.walk.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.walk.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return self._description


def _gather(
    images: torch.Tensor | ImageStore,
    triplets: list[tuple[int, int, int]],
    skipped: SkippedImages,
    source: Any,
) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Stack ``[q...; p...; n...]``; a triplet touching an unreadable image is replaced by a fresh one."""
    if isinstance(images, torch.Tensor):
        index = torch.tensor(triplets, dtype=torch.long).t().reshape(-1)
        return images[index], triplets
    target = len(triplets)
    while True:
        rows: list[torch.Tensor] = []
        for t in triplets:
            try:
                rows.append(torch.stack([images.get(i) for i in t]))
            except UnreadableImage as err:
                skipped.add(err)
                break
        if len(rows) == len(triplets):
            return torch.stack(rows, dim=1).reshape(-1, *rows[0].shape[1:]), triplets
        triplets = [t for t in triplets if not set(t) & images.bad]
        triplets += source.refill(target - len(triplets))


class TripletListSource(Source):
    """Fixed triplets from a CSV, shuffled each epoch."""

    def __init__(
        self, path: str, config: TrainConfig, image_size: int, channels: int, skipped: SkippedImages
    ):
        rows = read_triplet_csv(path)
        names = sorted({str(p) for row in rows for p in row})
        index = {n: i for i, n in enumerate(names)}
        self.triplets = np.asarray([[index[str(p)] for p in row] for row in rows], dtype=np.int64)
        self.store = ImageStore(names, image_size, channels, config.max_cache_bytes)
        self.skipped = skipped
        self.size = len(self.triplets)
        self.walk = EpochOrder(self.size, config.seed + 1)
        self.path = path

    def refill(self, count: int) -> list[tuple[int, int, int]]:
        """The next ``count`` triplets that touch no known-unreadable image (repeats when there are few)."""
        out: list[tuple[int, int, int]] = []
        misses = 0  # known-bad triplets drawn since the last good one
        while len(out) < count:
            t = tuple(int(v) for v in self.triplets[self.walk.next()[0]])
            if not set(t) & self.store.bad:
                out.append(t)  # type: ignore[arg-type]
                misses = 0
                continue
            misses += 1
            # Each pass is a permutation, so any 2 * size draws in a row hold every triplet at least once.
            if misses > 2 * self.size:
                raise EmptyCollectionError(f"every triplet of {self.path} has an unreadable image")
        return out

    def next_batch(self, batch_size: int) -> Batch:
        return Batch(_gather(self.store, self.refill(batch_size), self.skipped, self)[0], None)

    def state_dict(self) -> dict[str, Any]:
        return self.walk.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.walk.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return {"kind": "triplets", "path": self.path, "triplets": self.size, "images": len(self.store)}


class InstanceSource(Source):
    """Unlabelled folder: each image is its own instance.

    Query: the whole image; positive: a random augmented view of it (crop of part of the image, scale,
    colour jitter, JPEG re-compression); negative: another image. So a crop learns to find its source.
    Each image is its own category, and categories are the whole relevance.
    """

    categories_are_relevance = True

    def __init__(
        self, root: str, config: TrainConfig, image_size: int, channels: int, skipped: SkippedImages
    ):
        self.folder = UnlabelledFolder(root)
        skipped.paths.update(path for path, _ in self.folder.skipped)  # already warned about
        self.store = ImageStore(self.folder.paths, image_size, channels, config.max_cache_bytes)
        self.image_size, self.channels = image_size, channels
        self.skipped = skipped
        self.size = len(self.folder)
        self.rng = random.Random(config.seed)
        self.walk = EpochOrder(self.size, config.seed + 1)

    def _next_index(self) -> int:
        return self.walk.next()[0]

    def next_batch(self, batch_size: int) -> Batch:
        q, p, n = [], [], []
        ids: list[int] = []
        neg_ids: list[int] = []
        misses = 0
        while len(q) < batch_size:
            i = self._next_index()
            j = self.rng.randrange(self.size - 1)
            j += j >= i
            try:
                if i in self.store.bad or j in self.store.bad:
                    raise UnreadableImage(self.store.paths[i if i in self.store.bad else j], "skipped before")
                full = self.store.get(i)
                view = augmented_view(self.store.pil(i), self.image_size, self.channels, self.rng)
                negative = self.store.get(j)
            except UnreadableImage as err:
                self.skipped.add(err)
                misses += 1
                if misses > 10 * self.size:
                    raise EmptyCollectionError(f"no readable images in {self.folder.root}") from None
                continue
            q.append(full), p.append(view), n.append(negative)
            ids.append(i), neg_ids.append(j)
        return Batch(torch.stack(q + p + n), torch.tensor(ids + ids + neg_ids))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), **self.walk.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.walk.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return {"kind": "unlabelled", "path": str(self.folder.root), "images": self.size}


def spec_kind(data: str | None, kind: str = "auto") -> str:
    """What a DATA spec is: fashion-mnist, folder, triplets, unlabelled or records (``hf:PATH``, WebDataset
    ``.tar`` shards); ``kind`` other than ``auto`` is taken as given (only ``unlabelled`` cannot be told)."""
    if kind != "auto":
        if kind not in DATA_KINDS:
            raise ValueError(f"data_kind must be auto, {', '.join(DATA_KINDS)}, got {kind!r}")
        return kind
    if data is None or str(data).startswith("fashion-mnist"):
        return "fashion-mnist"
    if is_records_spec(str(data)):
        return "records"
    path = Path(data)
    if path.suffix.lower() == ".csv":
        return "triplets"
    if path.is_dir():
        return "folder"
    raise FileNotFoundError(
        f"training data not found: {path} (an image folder, a triplet CSV, hf:PATH or .tar shards expected)"
    )


def data_kind(config: TrainConfig) -> str:
    return spec_kind(config.data, config.data_kind)


@dataclass
class Labelled:
    """Labelled images of one DATA spec: the pixels (a tensor) or a store, labels, what they are, the
    model normalisation they suggest, and the image folder (for a relevance table's names), if any."""

    images: torch.Tensor | ImageStore
    labels: np.ndarray
    description: dict[str, Any]
    norm: dict[str, Any]
    folder: Any = None

    def subset(self, indices: np.ndarray) -> Labelled:
        """The images at ``indices`` (a split), in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        images: torch.Tensor | ImageStore
        folder = self.folder
        if isinstance(self.images, torch.Tensor):
            images = self.images[torch.from_numpy(idx)]
        elif isinstance(self.images, RecordStore):
            s = self.images
            budget = s.reserved_bytes
            images = RecordStore(s.records.subset(idx), s.image_size, s.channels, budget)
        else:
            s = self.images
            paths = [s.paths[i] for i in idx]
            images = ImageStore(paths, s.image_size, s.channels, s.reserved_bytes)
            if folder is not None:
                folder = SimpleNamespace(root=folder.root, paths=paths)
        return Labelled(images, self.labels[idx], dict(self.description), self.norm, folder)


def labelled_data(
    data: str | None, kind: str, config: TrainConfig, image_size: int, channels: int, skipped: SkippedImages
) -> Labelled:
    """The labelled images of ``data`` (of kind ``fashion-mnist``, ``folder`` or ``records``): the one place
    training and validation data are opened."""
    if kind == "fashion-mnist":
        split, _, where = (str(data or "fashion-mnist:test").partition(":")[2] or "test").partition(":")
        images, labels = load_fashion_mnist(split, where or None)
        tensor = resize(torch.from_numpy(images)[:, None], image_size)
        if channels == 3:
            tensor = tensor.expand(-1, 3, -1, -1)
        desc = {"kind": "fashion-mnist", "split": split, "images": int(len(labels))}
        norm = {"mean": FASHION_MNIST_MEAN * channels, "std": FASHION_MNIST_STD * channels}
        return Labelled(tensor.contiguous(), labels, desc, norm)
    assert data is not None
    if kind == "records":
        records = open_records(data, image_column=config.image_column, label_column=config.label_column)
        skipped.paths.update(name for name, _ in records.skipped)  # already warned about
        store = RecordStore(records, image_size, channels, config.max_cache_bytes)
        desc = {**records.description, "classes": records.classes}
        return Labelled(store, records.labels, desc, {})
    if kind != "folder":
        raise ValueError(f"{data}: labelled images expected (a folder, hf:PATH or .tar shards), not {kind}")
    folder = ImageFolder(data)
    skipped.paths.update(path for path, _ in folder.skipped)  # unlistable entries: already warned about
    store = ImageStore(folder.paths, image_size, channels, config.max_cache_bytes)
    desc = {"kind": "folder", "path": str(folder.root), "images": len(folder), "classes": folder.classes}
    return Labelled(store, folder.labels, desc, {}, folder)


def held_out_split(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(training rows, held-out rows)``: a seeded random ``fraction`` of ``range(count)`` held out."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {fraction}")
    held = max(1, round(fraction * count))
    if count - held < 2:
        raise ValueError(f"val_fraction {fraction} of {count} images leaves fewer than 2 to train on")
    order = np.random.default_rng(seed + 7).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


def build_source(
    config: TrainConfig, image_size: int, channels: int, skipped: SkippedImages
) -> tuple[Source, dict[str, Any]]:
    """The triplet source and the model normalisation it suggests.

    With ``config.val_fraction`` a seeded share of the labelled images is held out of training; the
    source's ``held_out`` holds it (:mod:`deeprank.training.validation`).
    """
    kind = data_kind(config)
    if kind in ("triplets", "unlabelled"):
        if config.val_fraction:
            raise ValueError(f"val_fraction needs labelled images; {config.data} is {kind} data (use --val)")
        assert config.data is not None
        cls = TripletListSource if kind == "triplets" else InstanceSource
        return cls(config.data, config, image_size, channels, skipped), {}
    data = labelled_data(config.data, kind, config, image_size, channels, skipped)
    held = None
    if config.val_fraction:
        train_rows, held_rows = held_out_split(len(data.labels), config.val_fraction, config.seed)
        data, held = data.subset(train_rows), data.subset(held_rows)
        data.description["held_out"] = len(held_rows)
    relevance = build_relevance(config, list(range(len(data.labels))), data.labels, data.images, data.folder)
    source = SampledSource(data.images, data.labels, relevance, config, skipped, data.description)
    source.held_out = held
    return source, data.norm
