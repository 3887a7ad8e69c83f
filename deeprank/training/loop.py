"""The Deep Ranking training loop: :class:`Trainer` (one optimisation step) and :func:`train` (the run).

``train(TrainConfig())`` trains the small multiscale network on the bundled Fashion-MNIST with the
online reservoir sampler (class labels as relevance) and writes a checkpoint directory.

:class:`Trainer` builds the model, optimizer, triplet source and random states once; each
:meth:`Trainer.step`:

* takes a batch of triplets from the *source* (bundled/array data, image folder, triplet CSV,
  unlabelled folder), stacked ``[q; p; n]`` into one ``[3B, C, S, S]`` batch;
* applies random pixel shifts (batched in torch; by default up to ``S // 32`` pixels, at least 1),
  runs the network once (channels-last on CPU) and applies the per-triplet hinge, either to the
  sampled triplets or, with in-batch mining (``mining``, :mod:`deeprank.training.mining`), to
  triplets mined from the same embeddings (``auto``: batch-all where categories are the relevance);
* takes one SGD step with Nesterov momentum; weight decay ``2 * lambda`` (the gradient of
  ``lambda ||W||^2``, with the batch loss reduced by its mean); dropout as configured in the model.

:func:`train` runs steps until the budget is spent (:mod:`deeprank.training.budget`), sets each
step's learning rate (a cosine from ``lr`` to ``0`` over the budget, or constant), shows progress,
and checkpoints atomically every ``checkpoint_every`` seconds and at the end
(:mod:`deeprank.training.state`); ``resume=True`` continues from the output directory with the same
optimizer, counters, sampler and random states, so an interrupted step-budgeted run ends where an
uninterrupted one would.

Every step's loss, learning rate, triplets/s and share of active triplets go to ``RUN/log.jsonl``
(and validation every ``val_every`` steps, the best model in ``RUN/best``): :mod:`.monitor`.

Unreadable images are skipped with one warning each and counted (``config.json["progress"]["skipped"]``).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.augment import random_shift
from ..data.images import SkippedImages
from ..devices import resolve_device
from ..models.multiscale import MultiScaleNet
from ..models.presets import preset_config
from ..nn import TripletRankingLoss
from ..progress import Progress
from .budget import budget_fraction, learning_rate
from .config import TrainConfig, check_config
from .logbook import active_fraction
from .mining import batch_all_triplet_loss, semi_hard_negatives
from .monitor import RunMonitor
from .sources import Source, build_source, data_kind
from .state import Counters, ResumePoint, restore_state, resume_point, save_training

__all__ = ["StepStats", "Trainer", "default_max_shift", "train"]


def default_max_shift(image_size: int) -> int:
    """The default pixel-shift range: about 3% of the side, at least 1 (1 px at 28 px, 7 px at 225 px).

    Shifts teach the position tolerance real photos need; on centred 28 px Fashion-MNIST larger ones
    measured worse (2 px below 1 px below none, docs/results.md), so the default stays small.
    """
    return max(1, int(image_size) // 32)


def _mining_mode(config: TrainConfig, source: Source) -> str:
    """``auto``: batch-all where categories are the whole relevance, else the sampler's triplets.

    Categories are the whole relevance for class labels and for unlabelled instances (each image its
    own category). A golden-feature or table relevance orders images *inside* a category, which only
    the sampled triplets carry; a triplet CSV has no categories at all.
    """
    if config.mining != "auto":
        return config.mining
    return "batch-all" if source.categories_are_relevance else "none"


def _new_model(config: TrainConfig, image_size: int, channels: int, norm: dict[str, Any]) -> MultiScaleNet:
    """A freshly initialised network as ``config`` says; ``norm``: the source's suggested mean/std."""
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
    return model


@dataclass(frozen=True)
class StepStats:
    """What one :meth:`Trainer.step` did: its loss, the triplets it consumed and its learning rate."""

    loss: float
    triplets: int
    lr: float
    active_fraction: float = math.nan  # share of the step's sampled triplets with a non-zero hinge


class Trainer:
    """Model, optimizer, triplet source and random states of one run, built once.

    Args:
        config: the run's settings (already checked; on resume, the merged configuration).
        resumed: the checkpoint to continue (:func:`~deeprank.training.state.resume_point`), if any:
            its model is trained further and its state restored, so the next step is the one an
            uninterrupted run would take.
    """

    def __init__(self, config: TrainConfig, resumed: ResumePoint | None = None) -> None:
        self.config = config
        if config.threads:
            torch.set_num_threads(int(config.threads))
        self.device = resolve_device(config.device)
        # Seeded before the source and the model are built: a fresh run's weights follow the seed.
        torch.manual_seed(config.seed)
        channels = config.in_channels or (1 if data_kind(config) == "fashion-mnist" else 3)
        self.skipped = SkippedImages()
        if resumed is not None:
            image_size = int(resumed.model.image_size)
        else:
            image_size = int(preset_config(config.preset, image_size=config.image_size)["image_size"])
        self.source, norm = build_source(config, image_size, channels, self.skipped)
        model = resumed.model if resumed is not None else _new_model(config, image_size, channels, norm)
        self.model = model.to(self.device).train()
        # On CPU, channels-last convolutions, pooling and batch norm run about 1.5x faster (oneDNN's
        # native layout); CUDA keeps the default. Weights are saved contiguous either way.
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.mining = _mining_mode(config, self.source)
        self.max_shift = default_max_shift(image_size) if config.max_shift is None else config.max_shift
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.momentum > 0,
            weight_decay=2.0 * config.weight_decay_lambda,
        )
        self.loss_fn = TripletRankingLoss(margin=config.margin)
        self.augment_rng = torch.Generator().manual_seed(config.seed + 2)
        self.counters = Counters()
        if resumed is not None:
            restore_state(self, resumed.state)

    def budget_spent(self, elapsed: float) -> float:
        """The share of the budget spent after ``elapsed`` training seconds (``>= 1``: done)."""
        c = self.counters
        return budget_fraction(self.config, c.step, c.triplets, self.source.epoch_float, elapsed)

    def _loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.mining == "batch-all" and labels is not None:
            labels = labels.to(self.device)
            return batch_all_triplet_loss(embeddings, labels, self.config.margin, self.augment_rng)
        if self.mining == "semi-hard" and labels is not None:
            return self.loss_fn(*semi_hard_negatives(embeddings, labels.to(self.device), self.config.margin))
        return self.loss_fn(embeddings)

    def step(self, lr: float) -> StepStats:
        """One optimisation step at learning rate ``lr``; counts it in :attr:`counters`."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.source.next_batch(self.config.batch_size)
        x = batch.images.to(self.device, non_blocking=True)
        x = x.float().div_(255.0) if not x.is_floating_point() else x
        if self.max_shift:
            x = random_shift(x, self.max_shift, self.augment_rng)
        embeddings = self.model(x.contiguous(memory_format=self.memory_format))
        loss = self._loss(embeddings, batch.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = float(loss.detach())
        self.counters.record(batch.triplets, value)
        active = active_fraction(embeddings, self.config.margin)
        return StepStats(loss=value, triplets=batch.triplets, lr=lr, active_fraction=active)


class _Throughput:
    """Triplets per second over windows of about 2 s (a first estimate after the first step)."""

    def __init__(self, start: float, triplets: int) -> None:
        self.start, self.t0, self.n0 = start, start, triplets
        self.rate = 0.0

    def update(self, triplets: int, now: float) -> None:
        if now - self.t0 >= 2.0:
            self.rate, self.t0, self.n0 = (triplets - self.n0) / (now - self.t0), now, triplets
        elif self.rate == 0.0 and now > self.start:
            self.rate = (triplets - self.n0) / max(now - self.t0, 1e-9)


def _show(bar: Progress, trainer: Trainer, rate: float, elapsed: float, force: bool = False) -> None:
    c = trainer.counters
    text = f"step {c.step} | {c.triplets} triplets | loss {c.loss_avg:.4f} | {rate:.0f} triplets/s"
    text += f" | {elapsed:.0f}s"
    bar.show(text, trainer.budget_spent(elapsed), force=force)


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train a model as ``config`` says; returns the checkpoint directory (``config.output``).

    With ``config.resume`` and a checkpoint in ``config.output`` holding a training state, the run
    continues from it (the saved training configuration wins for everything but the budget fields,
    ``output``, ``device``, ``threads`` and ``checkpoint_every``, see
    :data:`~deeprank.training.state.CALLER_FIELDS`).
    """
    check_config(config)
    resumed = resume_point(config)
    trainer = Trainer(resumed.config if resumed is not None else config, resumed)
    config, counters = trainer.config, trainer.counters
    bar = Progress("training", enabled=progress, interval=0.5)
    start = last_save = time.monotonic()
    throughput = _Throughput(start, counters.triplets)
    monitor = RunMonitor(trainer)  # RUN/log.jsonl, TensorBoard, validation every val_every steps

    def elapsed() -> float:  # training seconds of every session so far
        return counters.elapsed_before + (time.monotonic() - start)

    while True:
        fraction = trainer.budget_spent(elapsed())
        if fraction >= 1.0 or (config.stop_at_step is not None and counters.step >= config.stop_at_step):
            break
        stats = trainer.step(learning_rate(config, counters.step, fraction))
        now = time.monotonic()
        throughput.update(counters.triplets, now)
        _show(bar, trainer, throughput.rate, counters.elapsed_before + now - start)
        monitor.after_step(stats, throughput.rate, counters.elapsed_before + now - start)
        if not math.isfinite(stats.loss):
            bar.close()
            monitor.close()
            raise FloatingPointError(
                f"training diverged at step {counters.step} (loss {stats.loss}); lower --lr"
            )
        if config.checkpoint_every and now - last_save >= config.checkpoint_every:
            save_training(trainer, elapsed(), finished=False, rate=throughput.rate)
            monitor.checkpointed()
            last_save = time.monotonic()
    _show(bar, trainer, throughput.rate, elapsed(), force=True)
    bar.close()
    total = elapsed()
    save_training(trainer, total, finished=trainer.budget_spent(total) >= 1.0, rate=throughput.rate)
    monitor.close()
    if trainer.skipped.count:
        print(f"skipped {trainer.skipped.count} unreadable image(s)", file=sys.stderr)
    return Path(config.output)
