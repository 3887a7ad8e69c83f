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

Under ``torchrun`` (:mod:`deeprank.training.distributed`) each process is one rank of a
DistributedDataParallel run: it streams its own shard of each pass through its own sampler, batch
norms are synchronised, mining ranks every triplet of the global batch with the loss scaled so that
DDP's averaged gradient is the one-process gradient of that batch, rank 0 decides the budget, stop
and checkpoint times and broadcasts them, and every rank saves its sampler and random states
(:mod:`deeprank.training.rankstate`) next to rank 0's checkpoint.

Every step's loss, learning rate, triplets/s and share of active triplets go to ``RUN/log.jsonl``
(and validation every ``val_every`` steps, the best model in ``RUN/best``), by rank 0: :mod:`.monitor`.

Unreadable images are skipped with one warning each and counted (``config.json["progress"]["skipped"]``).
"""

from __future__ import annotations

import inspect
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.augment import random_shift
from ..data.images import SkippedImages
from ..devices import resolve_device
from ..errors import DeeprankError
from ..models.multiscale import MultiScaleNet
from ..models.presets import preset_config
from ..models.trunk_cache import configure_trunk
from ..nn import TripletRankingLoss
from ..progress import Progress
from .budget import budget_fraction, learning_rate
from .config import TrainConfig, check_config
from .distributed import (
    DistributedError,
    World,
    agree_on_error,
    broadcast_floats,
    collective,
    detect_world,
    gather_triplets,
    rank_seed,
    shard_source,
    start,
    stop,
    sum_floats,
    sync_batch_norm,
)
from .logbook import active_fraction
from .mining import batch_all_triplet_loss, semi_hard_negatives
from .monitor import RunMonitor
from .rankstate import load_rank_state, save_rank_state
from .sources import Batch, Source, build_source, data_kind
from .state import (
    Counters,
    ResumePoint,
    capture_sampling,
    restore_sampling,
    restore_state,
    resume_point,
    save_training,
)

__all__ = ["DivergedError", "StepStats", "Trainer", "default_max_shift", "train"]


class DivergedError(DeeprankError, FloatingPointError):
    """The training loss is not finite (on every rank alike: the loss is the global batch's)."""


# DDP's keyword for "do not broadcast buffers before each forward" (renamed in torch 2.13).
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


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
        world: this process's rank of a distributed run (:func:`~.distributed.detect_world`), whose
            process group is already joined (:func:`~.distributed.start`); default: one process.
    """

    def __init__(
        self, config: TrainConfig, resumed: ResumePoint | None = None, world: World | None = None
    ) -> None:
        self.config = config
        self.world = world = world if world is not None else World()
        if config.threads:
            torch.set_num_threads(int(config.threads))
        self.device = resolve_device(config.device)
        if world.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", world.local_rank)
        # Seeded before the source and the model are built: a fresh run's weights follow the seed.
        torch.manual_seed(config.seed)
        channels = config.in_channels or (1 if data_kind(config) == "fashion-mnist" else 3)
        self.skipped = SkippedImages()
        if resumed is not None:
            image_size = int(resumed.model.image_size)
        else:
            image_size = int(preset_config(config.preset, image_size=config.image_size)["image_size"])
        self.source, norm = build_source(config, image_size, channels, self.skipped)
        if world.distributed:
            shard_source(self.source, world, config.seed)
        model = resumed.model if resumed is not None else _new_model(config, image_size, channels, norm)
        if world.distributed:
            model = sync_batch_norm(model, self.device)
        #: the network itself (what a checkpoint saves); :attr:`net` runs it (DDP-wrapped if distributed)
        self.model = model.to(self.device).train()
        # A pretrained trunk's mode (frozen + feature cache, last blocks, full); None without a trunk.
        self.trunk_cache = configure_trunk(self.model, config)
        self.shift = random_shift if self.trunk_cache is None else self.trunk_cache.shift
        # On CPU, channels-last convolutions, pooling and batch norm run about 1.5x faster (oneDNN's
        # native layout); CUDA keeps the default. Weights are saved contiguous either way.
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.net: torch.nn.Module = self.model
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # Batch norms are synchronised, so the buffers agree without DDP broadcasting them.
            ids = [self.device.index] if self.device.type == "cuda" else None
            with collective("wrapping the model in DistributedDataParallel"):
                self.net = DistributedDataParallel(self.model, device_ids=ids, **_NO_FORWARD_BUFFER_SYNC)
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
        own_seed = rank_seed(config.seed, world.rank)
        if world.rank:
            torch.manual_seed(own_seed)  # dropout masks differ per rank (the weights are rank 0's)
        self.augment_rng = torch.Generator().manual_seed(own_seed + 2)
        # Mining draws must agree on every rank (each computes the loss of the global batch); one
        # process keeps drawing them from the shift generator, as before.
        self.mining_rng = (
            torch.Generator().manual_seed(config.seed + 3) if world.distributed else self.augment_rng
        )
        self.counters = Counters()
        if resumed is not None:
            restore_state(self, resumed.state)
            self._restore_ranks()

    # ----------------------------------------------------------------------------- per rank
    def rank_state(self) -> dict[str, Any]:
        """This rank's sampling and random state (``rank-{r}.json``, :mod:`.rankstate`)."""
        return {**capture_sampling(self), "mining_rng": self.mining_rng.get_state()}

    def _restore_ranks(self) -> None:
        """After :func:`restore_state` (rank 0's state): each rank's own sampling and random state.

        Same world size and every ``rank-{r}.json`` of the checkpoint's step: exact continuation.
        Otherwise weights, optimizer and counters stay restored and sampling restarts (warned).
        """
        world, config, step = self.world, self.config, self.counters.step
        mine = load_rank_state(config.output, world.rank)
        if mine is not None and mine["step"] != step:
            mine = None  # from another checkpoint (e.g. a killed save, or an earlier run)
        saved_world = mine["world_size"] if mine is not None else 1
        same = sum_floats([float(saved_world == world.size)], world, "the resume check")[0] == world.size
        if same:
            if mine is not None:
                restore_sampling(self, mine["state"])
                self.mining_rng.set_state(mine["state"]["mining_rng"])
            return
        epoch = math.ceil(self.source.epoch_float)
        shard_source(self.source, world, config.seed, restart_step=step, epoch=epoch)
        own = rank_seed(config.seed, world.rank, step)
        self.augment_rng.manual_seed(own + 2)
        torch.manual_seed(own)
        if world.distributed:
            self.mining_rng.manual_seed(rank_seed(config.seed + 3, 0, step))
        if world.is_main:
            warnings.warn(
                f"resuming {config.output} (saved by {saved_world} process(es)) with {world.size}: "
                f"weights, optimizer and counters restored; sampling restarts at pass {epoch} with "
                "fresh buffers and random streams (exact continuation needs the same world size)",
                stacklevel=2,
            )

    def budget_spent(self, elapsed: float) -> float:
        """The share of the budget spent after ``elapsed`` training seconds (``>= 1``: done)."""
        c = self.counters
        return budget_fraction(self.config, c.step, c.triplets, self.source.epoch_float, elapsed)

    def _mined_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.mining == "batch-all":
            return batch_all_triplet_loss(embeddings, labels, self.config.margin, self.mining_rng)
        return self.loss_fn(*semi_hard_negatives(embeddings, labels, self.config.margin))

    def _loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, float]:
        """The loss to back-propagate, and this rank's share of the step's loss (shares sum to it).

        Distributed, the loss is that of the global batch times the world size: each rank's
        backward reaches only its own rows, and DDP averages the ranks' gradients, so the update is
        the one-process gradient of the global batch.
        """
        world = self.world
        if self.mining in ("batch-all", "semi-hard") and labels is not None:
            embeddings, labels = gather_triplets(embeddings, labels.to(self.device), world)
            assert labels is not None
            loss = self._mined_loss(embeddings, labels)
            return loss * world.size, float(loss.detach()) / world.size
        loss = self.loss_fn(embeddings)
        if not world.distributed:
            return loss, float(loss.detach())
        # The per-triplet mean of the global batch: this rank's sum over the global count.
        local = embeddings.shape[0] // 3
        total = sum_floats([local], world, "the batch-size sum")[0]
        return loss * (local * world.size / total), float(loss.detach()) * local / total

    def _next_batch(self) -> Batch:
        """The source's next batch; distributed, a failure on any rank stops every rank alike."""
        if not self.world.distributed:
            return self.source.next_batch(self.config.batch_size)
        batch, error = None, None
        try:
            batch = self.source.next_batch(self.config.batch_size)
        except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then raised everywhere
            error = exc
        agree_on_error(error, self.world, "reading the batch")
        assert batch is not None
        return batch

    def backward(self, x: torch.Tensor, labels: torch.Tensor | None) -> float:
        """Forward ``x`` (float ``[3B, C, S, S]``), compute the loss and its gradients (no update).

        Returns this rank's share of the step's loss (the loss itself on one process).
        """
        embeddings = self.net(x.contiguous(memory_format=self.memory_format))
        loss, share = self._loss(embeddings, labels)
        # Of this rank's sampled triplets (the log is rank 0's), before mining changes them.
        self.last_active_fraction = active_fraction(embeddings, self.config.margin)
        self.optimizer.zero_grad(set_to_none=True)
        if self.world.distributed:
            with collective("the gradient all-reduce", any_runtime_error=False):
                loss.backward()
        else:
            loss.backward()
        return share

    def step(self, lr: float) -> StepStats:
        """One optimisation step at learning rate ``lr``; counts it in :attr:`counters`.

        Distributed, the loss and triplet count are those of the global batch (every rank's).
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self._next_batch()
        x = batch.images.to(self.device, non_blocking=True)
        x = x.float().div_(255.0) if not x.is_floating_point() else x
        if self.max_shift:
            x = self.shift(x, self.max_shift, self.augment_rng)
        share = self.backward(x, batch.labels)
        self.optimizer.step()
        value, triplets = share, batch.triplets
        if self.world.distributed:
            value, total = sum_floats([share, triplets], self.world, "the loss sum")
            triplets = int(total)
        self.counters.record(triplets, value)
        return StepStats(loss=value, triplets=triplets, lr=lr, active_fraction=self.last_active_fraction)


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


def _checkpoint(trainer: Trainer, elapsed: float, *, finished: bool, rate: float) -> None:
    """Save the run: every rank its ``rank-{r}.json``, then rank 0 the checkpoint (all atomic).

    The rank files go first and rank 0 writes only once all of them are written, so a checkpoint's
    ``config.json`` never names a step whose rank files are missing; a failed write on any rank
    stops every rank with its message.
    """
    world = trainer.world
    if not world.distributed:
        save_training(trainer, elapsed, finished=finished, rate=rate)
        return
    error: Exception | None = None
    try:
        save_rank_state(
            trainer.config.output, world.rank, world.size, trainer.counters.step, trainer.rank_state()
        )
    except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then raised everywhere
        error = exc
    agree_on_error(error, world, "writing the rank states")
    try:
        if world.is_main:
            save_training(trainer, elapsed, finished=finished, rate=rate)
    except Exception as exc:  # noqa: BLE001
        error = exc
    agree_on_error(error, world, "writing the checkpoint")


def _agree_on_resume(config: TrainConfig, resumed: ResumePoint | None, world: World) -> None:
    """Every rank must see the checkpoint rank 0 resumes (a shared ``--output``), or all stop."""
    if not world.distributed:
        return
    step = float(resumed.state["step"]) if resumed is not None else -1.0
    first = broadcast_floats([step], world, "the resume check")[0]
    error = None
    if first != step:

        def seen(s: float) -> str:
            return "no checkpoint" if s < 0 else f"a checkpoint of step {s:.0f}"

        error = DistributedError(
            f"rank {world.rank} sees {seen(step)} in {config.output} but rank 0 sees {seen(first)}; "
            "--output must be a folder every rank shares"
        )
    agree_on_error(error, world, "the resume check")


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train a model as ``config`` says; returns the checkpoint directory (``config.output``).

    With ``config.resume`` and a checkpoint in ``config.output`` holding a training state, the run
    continues from it (the saved training configuration wins for everything but the budget fields,
    ``output``, ``device``, ``threads`` and ``checkpoint_every``, see
    :data:`~deeprank.training.state.CALLER_FIELDS`).

    Started by ``torchrun`` (``WORLD_SIZE`` set), this process is one rank of a distributed run
    (:mod:`deeprank.training.distributed`); only rank 0 shows progress and writes the model.
    """
    check_config(config)
    world = detect_world()
    if not world.distributed:
        return _run(config, progress, world)
    start(world, resolve_device(config.device))
    try:
        return _run(config, progress and world.is_main, world)
    finally:
        stop()


def _run(config: TrainConfig, progress: bool, world: World) -> Path:
    resumed = resume_point(config)
    _agree_on_resume(config, resumed, world)
    trainer = Trainer(resumed.config if resumed is not None else config, resumed, world)
    config, counters = trainer.config, trainer.counters
    bar = Progress("training", enabled=progress, interval=0.5)
    start_time = last_save = time.monotonic()
    throughput = _Throughput(start_time, counters.triplets)
    first_step = counters.step
    monitor = RunMonitor(trainer)  # RUN/log.jsonl, TensorBoard, validation (rank 0)

    def elapsed() -> float:  # training seconds of every session so far (rank 0's decide)
        return counters.elapsed_before + (time.monotonic() - start_time)

    while True:
        fraction = trainer.budget_spent(elapsed())
        done = fraction >= 1.0 or (config.stop_at_step is not None and counters.step >= config.stop_at_step)
        # The periodic save of the previous step's state (decided here, with the budget).
        every = config.checkpoint_every
        save = bool(every) and counters.step > first_step and time.monotonic() - last_save >= every
        if world.distributed:  # rank 0 decides; no rank may wait for a step the others skip
            fraction, done, save = broadcast_floats([fraction, done, save], world, "the budget decision")
        if save:
            _checkpoint(trainer, elapsed(), finished=False, rate=throughput.rate)
            monitor.checkpointed()
            last_save = time.monotonic()
        if done:
            break
        stats = trainer.step(learning_rate(config, counters.step, fraction))
        now = time.monotonic()
        throughput.update(counters.triplets, now)
        _show(bar, trainer, throughput.rate, counters.elapsed_before + now - start_time)
        monitor.after_step(stats, throughput.rate, counters.elapsed_before + now - start_time)
        if not math.isfinite(stats.loss):  # the global loss: every rank stops with this message
            bar.close()
            monitor.close()
            raise DivergedError(f"training diverged at step {counters.step} (loss {stats.loss}); lower --lr")
    _show(bar, trainer, throughput.rate, elapsed(), force=True)
    bar.close()
    total = elapsed()
    finished = broadcast_floats([trainer.budget_spent(total) >= 1.0], world, "the final decision")[0]
    _checkpoint(trainer, total, finished=bool(finished), rate=throughput.rate)
    monitor.close()
    if trainer.skipped.count:
        print(f"skipped {trainer.skipped.count} unreadable image(s)", file=sys.stderr)
    return Path(config.output)
