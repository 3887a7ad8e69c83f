"""Training: the Deep Ranking loop, its configuration, data sources, checkpoints and resume.

``train(TrainConfig())`` trains the small multiscale network on the bundled Fashion-MNIST with the
online reservoir sampler (class labels as relevance) and writes a checkpoint directory. The loop:

* triplets come from a *source* (bundled/array data, image folder, triplet CSV, unlabelled folder);
* each step stacks ``[q; p; n]`` into one ``[3B, C, S, S]`` batch, applies random pixel shifts
  (batched in torch; by default up to ``S // 32`` pixels, at least 1), runs the network once
  (channels-last on CPU) and applies the per-triplet hinge, either to the sampled triplets or, with
  in-batch mining (``mining``, :mod:`deeprank.mining`), to triplets mined from the same embeddings
  (``auto``: batch-all where categories are the relevance);
* SGD with Nesterov momentum; weight decay ``2 * lambda`` (the gradient of ``lambda ||W||^2``, with
  the batch loss reduced by its mean); dropout as configured in the model (the paper keeps 60%);
* the learning rate follows a cosine from ``lr`` to ``0`` over the run's budget (steps, triplets,
  epochs or seconds, whichever ends first) or stays constant (``schedule="constant"``);
* checkpoints (``deeprank.checkpoint``) are written atomically every ``checkpoint_every`` seconds and
  at the end; ``resume=True`` continues from the output directory with the same optimizer, counters,
  sampler and random states, so an interrupted step-budgeted run ends where an uninterrupted one would.

Unreadable images are skipped with one warning each and counted (``config.json["progress"]["skipped"]``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import CONFIG_FILE, load_config, load_train_state, save_checkpoint
from .data.fashion_mnist import load_fashion_mnist
from .data.folders import ImageFolder, ImageStore, UnlabelledFolder, read_triplet_csv
from .data.transforms import SkippedImages, UnreadableImage, augmented_view, random_shift
from .mining import batch_all_triplet_loss, semi_hard_negatives
from .models import MultiScaleNet, build_model, preset_config
from .nn import TripletRankingLoss
from .sampling import ClassRelevance, GoldenRelevance, ReservoirTripletSampler, TableRelevance

__all__ = ["TrainConfig", "add_train_arguments", "config_from_args", "resolve_device", "train"]

FASHION_MNIST_MEAN = [0.2860]
FASHION_MNIST_STD = [0.3530]


@dataclass
class TrainConfig:
    """Everything a training run needs; every field has a CLI flag (``deeprank train --help``).

    Data (``data``): ``None`` = the bundled Fashion-MNIST test split; ``"fashion-mnist:train"`` /
    ``"fashion-mnist:test"``; a folder with one sub-folder per category; a ``.csv`` of
    ``query,positive,negative`` paths; or, with ``data_kind="unlabelled"``, a flat folder where each
    image is its own instance. ``relevance``: ``None`` (class labels), ``"golden"`` (hand-crafted
    features) or a CSV of ``image_a,image_b,score`` (names relative to the image folder).

    Budget: the run stops at the first of ``epochs`` (passes over the data), ``max_steps``,
    ``max_triplets`` and ``time_budget`` (seconds, counted across resumes); if none is set, 1 epoch.
    """

    data: str | None = None
    data_kind: str = "auto"  # auto | fashion-mnist | folder | triplets | unlabelled
    relevance: str | None = None
    output: str = "runs/deeprank"
    preset: str = "small"
    image_size: int | None = None
    in_channels: int | None = None  # default: 1 for Fashion-MNIST, 3 otherwise
    embedding_dim: int | None = None
    single_scale: bool = False
    dropout: float | None = None
    convnet_weights: str | None = None
    epochs: float | None = None
    max_steps: int | None = None
    max_triplets: int | None = None
    time_budget: float | None = None
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay_lambda: float = 0.001
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 100
    margin: float = 1.0
    mining: str = "auto"  # auto | none | batch-all | semi-hard (see _mining_mode, deeprank.mining)
    out_of_class_fraction: float = 0.2
    buffer_capacity: int = 1000
    relevance_margin: float = 0.0
    max_tries: int = 32
    max_shift: int | None = None  # pixels; None: max(1, image_size // 32), see default_max_shift
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    workers: int = 0  # reserved: image decoding happens in the training process
    checkpoint_every: float = 300.0
    # End this session at this step (checkpoint kept; the schedule still spans the whole budget).
    stop_at_step: int | None = None
    resume: bool = False
    max_cache_bytes: int = 2 << 30
    model_options: dict[str, Any] = field(default_factory=dict)  # other MultiScaleNet keys (conv, fc...)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` fails clearly without a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is usable (torch sees none)")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return torch.device(device)


# ===================================================================================== data sources
class _EpochOrder:
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


class _Source:
    """A deterministic, resumable producer of stacked triplet batches ``uint8 [3B, C, S, S]``."""

    size: int  # images (or triplets) per epoch, for the epoch budget
    walk: _EpochOrder

    @property
    def epoch_float(self) -> float:
        return self.walk.epoch_float

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(uint8 [3B, C, S, S] stacked q/p/n, category of each image [3B] or None)``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}


class _SampledSource(_Source):
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
        self.sampler = ReservoirTripletSampler(
            config.buffer_capacity,
            pair_relevance=None if isinstance(relevance, ClassRelevance) else relevance.pair,
            out_of_class_fraction=config.out_of_class_fraction,
            relevance_margin=config.relevance_margin,
            max_tries=config.max_tries,
            seed=config.seed,
        )
        self.walk = _EpochOrder(self.size, config.seed + 1)

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
                    raise RuntimeError("the sampler emits no triplets: check the categories and relevance")
                continue
            out.append((t.query, t.positive, t.negative))
        return out

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        triplets = self.refill(batch_size)
        images, triplets = _gather(self.images, triplets, self.skipped, self)
        index = torch.tensor(triplets, dtype=torch.long).t().reshape(-1)
        return images, torch.from_numpy(self.labels)[index]

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


class _TripletListSource(_Source):
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
        self.walk = _EpochOrder(self.size, config.seed + 1)
        self.path = path

    def refill(self, count: int) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        tries = 0
        while len(out) < count:
            t = tuple(int(v) for v in self.triplets[self.walk.next()[0]])
            tries += 1
            if not set(t) & self.store.bad:
                out.append(t)  # type: ignore[arg-type]
            elif tries > 2 * self.size + count:
                raise RuntimeError(f"every triplet of {self.path} has an unreadable image")
        return out

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return _gather(self.store, self.refill(batch_size), self.skipped, self)[0], None

    def state_dict(self) -> dict[str, Any]:
        return self.walk.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.walk.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return {"kind": "triplets", "path": self.path, "triplets": self.size, "images": len(self.store)}


class _InstanceSource(_Source):
    """Unlabelled folder: each image is its own instance.

    Query: the whole image; positive: a random augmented view of it (crop of part of the image, scale,
    colour jitter, JPEG re-compression); negative: another image. So a crop learns to find its source.
    """

    def __init__(
        self, root: str, config: TrainConfig, image_size: int, channels: int, skipped: SkippedImages
    ):
        self.folder = UnlabelledFolder(root)
        self.store = ImageStore(self.folder.paths, image_size, channels, config.max_cache_bytes)
        self.image_size, self.channels = image_size, channels
        self.skipped = skipped
        self.size = len(self.folder)
        self.rng = random.Random(config.seed)
        self.walk = _EpochOrder(self.size, config.seed + 1)

    def _next_index(self) -> int:
        return self.walk.next()[0]

    def next_batch(self, batch_size: int) -> torch.Tensor:
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
                    raise RuntimeError(f"no readable images in {self.folder.root}") from None
                continue
            q.append(full), p.append(view), n.append(negative)
            ids.append(i), neg_ids.append(j)
        return torch.stack(q + p + n), torch.tensor(ids + ids + neg_ids)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), **self.walk.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.walk.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return {"kind": "unlabelled", "path": str(self.folder.root), "images": self.size}


def _data_kind(config: TrainConfig) -> str:
    if config.data_kind != "auto":
        if config.data_kind not in ("fashion-mnist", "folder", "triplets", "unlabelled"):
            raise ValueError(
                "data_kind must be auto, fashion-mnist, folder, triplets or unlabelled, "
                f"got {config.data_kind!r}"
            )
        return config.data_kind
    if config.data is None or str(config.data).startswith("fashion-mnist"):
        return "fashion-mnist"
    path = Path(config.data)
    if path.suffix.lower() == ".csv":
        return "triplets"
    if path.is_dir():
        return "folder"
    raise FileNotFoundError(f"training data not found: {path} (an image folder or a triplet CSV expected)")


def _build_source(
    config: TrainConfig, image_size: int, channels: int, skipped: SkippedImages
) -> tuple[_Source, dict[str, Any]]:
    """The triplet source and the model normalisation it suggests."""
    kind = _data_kind(config)
    if kind == "fashion-mnist":
        split, _, where = (str(config.data or "fashion-mnist:test").partition(":")[2] or "test").partition(
            ":"
        )
        images, labels = load_fashion_mnist(split, where or None)
        tensor = torch.from_numpy(images)[:, None]
        if image_size != tensor.shape[-1]:
            tensor = (
                torch.nn.functional.interpolate(
                    tensor.float(), size=image_size, mode="bilinear", align_corners=False
                )
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        if channels == 3:
            tensor = tensor.expand(-1, 3, -1, -1)
        tensor = tensor.contiguous()
        relevance = _relevance(config, list(range(len(labels))), labels, tensor, None)
        desc = {"kind": "fashion-mnist", "split": split, "images": int(len(labels))}
        norm = {"mean": FASHION_MNIST_MEAN * channels, "std": FASHION_MNIST_STD * channels}
        return _SampledSource(tensor, labels, relevance, config, skipped, desc), norm
    assert config.data is not None
    if kind == "triplets":
        return _TripletListSource(config.data, config, image_size, channels, skipped), {}
    if kind == "unlabelled":
        return _InstanceSource(config.data, config, image_size, channels, skipped), {}
    folder = ImageFolder(config.data)
    store = ImageStore(folder.paths, image_size, channels, config.max_cache_bytes)
    relevance = _relevance(config, list(range(len(folder))), folder.labels, store, folder)
    desc = {"kind": "folder", "path": str(folder.root), "images": len(folder), "classes": folder.classes}
    return _SampledSource(store, folder.labels, relevance, config, skipped, desc), {}


def _relevance(config: TrainConfig, refs: list[int], labels: np.ndarray, images: Any, folder: Any) -> Any:
    if config.relevance is None or config.relevance == "labels":
        return ClassRelevance(refs, labels.tolist())
    if config.relevance == "golden":
        from .features import color_histogram, hog, wavelet

        if isinstance(images, ImageStore):
            batch = torch.stack([images.get(i) for i in range(len(images))])
        else:
            batch = images
        feats = {"color": color_histogram(batch), "hog": hog(batch), "wavelet": wavelet(batch)}
        return GoldenRelevance(feats, labels, seed=config.seed)
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


# ===================================================================================== the loop
class _Progress:
    """One status line on stderr: step, triplets, loss, triplets/s, elapsed (a light progress bar)."""

    def __init__(self, enabled: bool, total_steps: int | None, time_budget: float | None) -> None:
        self.enabled = enabled and sys.stderr is not None
        self.total_steps, self.time_budget = total_steps, time_budget
        self.last = 0.0

    def update(
        self, step: int, triplets: int, loss: float, rate: float, elapsed: float, force: bool = False
    ) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.5):
            return
        self.last = now
        frac = None
        if self.total_steps:
            frac = step / self.total_steps
        if self.time_budget:
            frac = max(frac or 0.0, elapsed / self.time_budget)
        bar = ""
        if frac is not None:
            filled = int(20 * min(frac, 1.0))
            bar = f"[{'#' * filled}{'.' * (20 - filled)}] {100 * min(frac, 1.0):3.0f}% "
        sys.stderr.write(
            f"\r{bar}step {step} | {triplets} triplets | loss {loss:.4f} | {rate:.0f} triplets/s "
            f"| {elapsed:.0f}s "
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


MINING_MODES = ("auto", "none", "batch-all", "semi-hard")


def _mining_mode(config: TrainConfig, source: _Source) -> str:
    """``auto``: batch-all where categories are the whole relevance, else the sampler's triplets.

    Categories are the whole relevance for class labels and for unlabelled instances (each image its
    own category). A golden-feature or table relevance orders images *inside* a category, which only
    the sampled triplets carry; a triplet CSV has no categories at all.
    """
    if config.mining != "auto":
        return config.mining
    if isinstance(source, _InstanceSource):
        return "batch-all"
    if isinstance(source, _SampledSource) and isinstance(source.relevance, ClassRelevance):
        return "batch-all"
    return "none"


def _budget_fraction(config: TrainConfig, step: int, triplets: int, epoch: float, elapsed: float) -> float:
    fractions = []
    if config.max_steps:
        fractions.append(step / config.max_steps)
    if config.max_triplets:
        fractions.append(triplets / config.max_triplets)
    if config.epochs:
        fractions.append(epoch / config.epochs)
    if config.time_budget:
        fractions.append(elapsed / config.time_budget)
    if not fractions:
        fractions.append(epoch)  # default budget: one epoch
    return max(fractions)


def _check_config(config: TrainConfig) -> None:
    for name in ("batch_size",):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in ("lr", "margin"):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(config, name)}")
    for name in ("momentum", "weight_decay_lambda"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
    for name in ("epochs", "max_steps", "max_triplets", "time_budget"):
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 when given, got {value}")
    if config.schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {config.schedule!r}")
    if config.mining not in MINING_MODES:
        raise ValueError(f"mining must be one of {', '.join(MINING_MODES)}, got {config.mining!r}")
    if config.max_shift is not None and (
        isinstance(config.max_shift, bool) or not isinstance(config.max_shift, int) or config.max_shift < 0
    ):
        raise ValueError(f"max_shift must be an int >= 0 or None (auto), got {config.max_shift!r}")


def default_max_shift(image_size: int) -> int:
    """The default pixel-shift range: about 3% of the side, at least 1 (1 px at 28 px, 7 px at 225 px).

    Shifts teach the position tolerance real photos need; on centred 28 px Fashion-MNIST larger ones
    measured worse (2 px below 1 px below none, docs/results.md), so the default stays small.
    """
    return max(1, int(image_size) // 32)


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train a model as ``config`` says; returns the checkpoint directory (``config.output``).

    With ``config.resume`` and a checkpoint in ``config.output`` holding a training state, the run
    continues from it (the saved training configuration wins for everything but the budget fields,
    ``output``, ``device``, ``threads`` and ``checkpoint_every``).
    """
    _check_config(config)
    output = Path(config.output)
    state = None
    if config.resume and (output / CONFIG_FILE).is_file():
        saved = load_config(output)
        state = load_train_state(output)
        if state is None:
            raise ValueError(f"{output} has no training state to resume from (train_state.pt missing)")
        keep = {
            "epochs",
            "max_steps",
            "max_triplets",
            "time_budget",
            "output",
            "device",
            "threads",
            "checkpoint_every",
            "resume",
            "stop_at_step",
        }
        merged = {k: v for k, v in saved.get("train", {}).items() if k in TrainConfig.__dataclass_fields__}
        merged.update({k: getattr(config, k) for k in keep})
        config = TrainConfig(**merged)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    kind = _data_kind(config)
    channels = config.in_channels or (1 if kind == "fashion-mnist" else 3)
    skipped = SkippedImages()

    if state is not None:
        model = build_model(load_config(output)["model"])
        image_size = model.image_size
    else:
        image_size = int(preset_config(config.preset, image_size=config.image_size)["image_size"])
    source, norm = _build_source(config, image_size, channels, skipped)
    if state is None:
        overrides: dict[str, Any] = dict(config.model_options)
        if config.dropout is not None:
            overrides["dropout"] = config.dropout
        mean = overrides.pop("mean", norm.get("mean"))
        std = overrides.pop("std", norm.get("std"))
        model = MultiScaleNet(
            config.preset,
            image_size=image_size,
            in_channels=channels,
            embedding_dim=config.embedding_dim,
            single_scale=config.single_scale,
            mean=mean,
            std=std,
            **overrides,
        )
        if config.convnet_weights:
            model.load_convnet_weights(config.convnet_weights)
    else:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(output / "model.safetensors")))
    model.to(device).train()
    # On CPU, channels-last convolutions, pooling and batch norm run about 1.5x faster (oneDNN's
    # native layout); CUDA keeps the default. Weights are saved contiguous either way.
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model.to(memory_format=memory_format)
    mining = _mining_mode(config, source)
    max_shift = default_max_shift(image_size) if config.max_shift is None else config.max_shift

    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
        weight_decay=2.0 * config.weight_decay_lambda,
    )
    loss_fn = TripletRankingLoss(margin=config.margin)
    augment_rng = torch.Generator().manual_seed(config.seed + 2)
    step, triplets, elapsed_before, loss_avg = 0, 0, 0.0, float("nan")
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        source.load_state_dict(state["source"])
        augment_rng.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        step, triplets = int(state["step"]), int(state["triplets"])
        elapsed_before, loss_avg = float(state["elapsed"]), float(state["loss_avg"])
        skipped.paths |= set(state.get("skipped", []))

    def save(final: bool) -> None:
        train_state = {
            "optimizer": optimizer.state_dict(),
            "source": source.state_dict(),
            "augment_rng": augment_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "step": step,
            "triplets": triplets,
            "elapsed": elapsed_before + (time.monotonic() - start),
            "loss_avg": loss_avg,
            "skipped": sorted(skipped.paths),
        }
        info = {
            "train": {k: v for k, v in config.to_dict().items()},
            "data": source.describe(),
            "progress": {
                "step": step,
                "triplets": triplets,
                "epoch": round(source.epoch_float, 4),
                "elapsed_s": round(train_state["elapsed"], 2),
                "loss": loss_avg,
                "skipped": skipped.count,
                "finished": final
                and _budget_fraction(config, step, triplets, source.epoch_float, train_state["elapsed"])
                >= 1.0,
                "triplets_per_s": round(rate, 1),
            },
        }
        save_checkpoint(output, model, info, train_state)

    bar = _Progress(progress, config.max_steps, config.time_budget)
    start = time.monotonic()
    last_save = start
    rate, rate_t0, rate_n0 = 0.0, start, triplets
    while True:
        elapsed = elapsed_before + (time.monotonic() - start)
        fraction = _budget_fraction(config, step, triplets, source.epoch_float, elapsed)
        if fraction >= 1.0 or (config.stop_at_step is not None and step >= config.stop_at_step):
            break
        lr = config.lr
        if config.schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))
        if config.warmup_steps and step < config.warmup_steps:
            lr *= (step + 1) / config.warmup_steps
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch, labels = source.next_batch(config.batch_size)
        x = batch.to(device, non_blocking=True)
        x = x.float().div_(255.0) if not x.is_floating_point() else x
        if max_shift:
            x = random_shift(x, max_shift, augment_rng)
        embeddings = model(x.contiguous(memory_format=memory_format))
        if mining == "batch-all" and labels is not None:
            loss = batch_all_triplet_loss(embeddings, labels.to(device), config.margin, augment_rng)
        elif mining == "semi-hard" and labels is not None:
            loss = loss_fn(*semi_hard_negatives(embeddings, labels.to(device), config.margin))
        else:
            loss = loss_fn(embeddings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        triplets += batch.shape[0] // 3
        value = float(loss.detach())
        loss_avg = value if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * value
        now = time.monotonic()
        if now - rate_t0 >= 2.0:
            rate, rate_t0, rate_n0 = (triplets - rate_n0) / (now - rate_t0), now, triplets
        elif rate == 0.0 and now > start:
            rate = (triplets - rate_n0) / max(now - rate_t0, 1e-9)
        bar.update(step, triplets, loss_avg, rate, elapsed_before + now - start)
        if not math.isfinite(value):
            bar.close()
            raise FloatingPointError(f"training diverged at step {step} (loss {value}); lower --lr")
        if config.checkpoint_every and now - last_save >= config.checkpoint_every:
            save(final=False)
            last_save = time.monotonic()
    bar.update(step, triplets, loss_avg, rate, elapsed_before + time.monotonic() - start, force=True)
    bar.close()
    save(final=True)
    if skipped.count:
        print(f"skipped {skipped.count} unreadable image(s)", file=sys.stderr)
    return output


# ===================================================================================== CLI glue
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``deeprank train``'s options to ``parser``; the CLI then calls :func:`config_from_args`."""
    d = TrainConfig()
    a = parser.add_argument
    a(
        "data",
        nargs="?",
        default=None,
        help="image folder (one sub-folder per category), triplet CSV, unlabelled folder (--unlabelled), "
        "or fashion-mnist:train / fashion-mnist:test; default: the bundled Fashion-MNIST test split",
    )
    a("--unlabelled", action="store_true", help="DATA is a flat folder; each image is its own instance")
    a("--relevance", default=None, help="'golden' (hand-crafted features) or a CSV image_a,image_b,score")
    a("-o", "--output", default=d.output, help=f"checkpoint directory (default {d.output})")
    a("--preset", default=d.preset, choices=["small", "paper"], help="network preset (default small)")
    a("--image-size", type=int, default=None, help="input side in pixels (default: the preset's)")
    a("--channels", type=int, choices=[1, 3], default=None, help="1 grayscale or 3 RGB (default: from data)")
    a("--embedding-dim", type=int, default=None, help="embedding size d (default: the preset's)")
    a("--single-scale", action="store_true", help="ConvNet branch only (the paper's ablation)")
    a(
        "--dropout",
        type=float,
        default=None,
        help="dropout on fully connected layers (default: the preset's, small 0, paper 0.4)",
    )
    a("--convnet-weights", default=None, help="a weight file for the ConvNet branch (.safetensors/.pt)")
    a("--epochs", type=float, default=None, help="passes over the data")
    a("--max-steps", type=int, default=None, help="stop after this many steps")
    a("--max-triplets", type=int, default=None, help="stop after this many triplets")
    a("--time-budget", type=float, default=None, help="stop after this many seconds (across resumes)")
    a("--batch-size", type=int, default=d.batch_size, help=f"triplets per step (default {d.batch_size})")
    a("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    a("--momentum", type=float, default=d.momentum, help=f"Nesterov momentum (default {d.momentum})")
    a(
        "--lambda",
        dest="weight_decay_lambda",
        type=float,
        default=d.weight_decay_lambda,
        help=f"lambda of lambda*||W||^2 (default {d.weight_decay_lambda})",
    )
    a("--schedule", choices=["cosine", "constant"], default=d.schedule, help="learning-rate schedule")
    a("--margin", type=float, default=d.margin, help=f"gap g of the ranking hinge (default {d.margin})")
    a(
        "--mining",
        choices=list(MINING_MODES),
        default=d.mining,
        help="in-batch mining: batch-all (every active triplet of the batch), semi-hard, or none (the "
        "sampler's triplets only); auto (default) = batch-all when categories are the relevance",
    )
    a(
        "--out-of-class",
        dest="out_of_class_fraction",
        type=float,
        default=d.out_of_class_fraction,
        help=f"share of out-of-class negatives (default {d.out_of_class_fraction})",
    )
    a("--buffer-capacity", type=int, default=d.buffer_capacity, help="images per category buffer")
    a("--relevance-margin", type=float, default=d.relevance_margin, help="T_r for in-class negatives")
    a(
        "--max-shift",
        type=int,
        default=d.max_shift,
        help="random pixel shift augmentation in pixels (default: image size // 32, at least 1; 0: off)",
    )
    a("--seed", type=int, default=d.seed, help="random seed (runs repeat exactly on one device)")
    a("--device", default=d.device, help="auto, cpu or cuda (default auto)")
    a("--threads", type=int, default=None, help="torch CPU threads")
    a("--checkpoint-every", type=float, default=d.checkpoint_every, help="seconds between checkpoints")
    a("--resume", action="store_true", help="continue the run in --output")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` for parsed ``deeprank train`` arguments."""
    return TrainConfig(
        data=args.data,
        data_kind="unlabelled" if args.unlabelled else "auto",
        relevance=args.relevance,
        output=args.output,
        preset=args.preset,
        image_size=args.image_size,
        in_channels=args.channels,
        embedding_dim=args.embedding_dim,
        single_scale=args.single_scale,
        dropout=args.dropout,
        convnet_weights=args.convnet_weights,
        epochs=args.epochs,
        max_steps=args.max_steps,
        max_triplets=args.max_triplets,
        time_budget=args.time_budget,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay_lambda=args.weight_decay_lambda,
        schedule=args.schedule,
        margin=args.margin,
        mining=args.mining,
        out_of_class_fraction=args.out_of_class_fraction,
        buffer_capacity=args.buffer_capacity,
        relevance_margin=args.relevance_margin,
        max_shift=args.max_shift,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
    )
