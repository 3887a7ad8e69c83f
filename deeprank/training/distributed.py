"""Training on several processes: the ``torch.distributed`` glue (started by ``torchrun``).

``torchrun --nproc-per-node N -m deeprank train ...`` starts N processes ("ranks") with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`detect_world` reads
them, :func:`start` joins the process group (gloo on CPU, nccl on CUDA) and everything else here is
what the training loop needs on top of DistributedDataParallel:

* :func:`gather_triplets`: the global ``[q; p; n]`` batch of embeddings and labels with the gradient
  kept on this rank's rows, so in-batch mining ranks every triplet of the global batch;
* :func:`broadcast_floats` / :func:`sum_floats` / :func:`agree_on_error`: rank 0 decides (budget,
  stop, checkpoint) and broadcasts; a failure on one rank stops every rank with the same message;
* :func:`sync_batch_norm`: batch statistics over the global batch (torch's SyncBatchNorm on CUDA,
  :class:`CPUSyncBatchNorm` on CPU, where torch's has no kernel);
* :func:`shard_source`: each rank streams a disjoint shard of each pass through its own sampler.

What sharding changes statistically: a category has one Algorithm 1 buffer per rank instead of
one, each filled from that rank's ``1/N`` of the category's images per pass, and a triplet's three
images always come from one rank's buffers (no image is drawn by two ranks in one pass). While a
category's share per rank fills ``buffer_capacity``, the draws behave as one process's; smaller
shards leave the buffers with fewer candidates, so in-class negatives get rarer.

A rank that dies or stalls makes the others fail within ``DEEPRANK_DIST_TIMEOUT`` seconds
(:data:`DEFAULT_TIMEOUT_S` by default; a killed peer is usually noticed at once, when its sockets
close) with a :class:`DistributedError` naming the collective, never a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import DeeprankError
from .sources import EpochOrder, Source

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "CPUSyncBatchNorm",
    "DistributedError",
    "World",
    "agree_on_error",
    "barrier",
    "broadcast_floats",
    "collective",
    "detect_world",
    "gather_rows",
    "gather_triplets",
    "rank_seed",
    "shard_source",
    "start",
    "stop",
    "sum_floats",
    "sync_batch_norm",
    "timeout_seconds",
]

TIMEOUT_ENV = "DEEPRANK_DIST_TIMEOUT"
#: seconds a rank waits in a collective for the others before it gives up (``DEEPRANK_DIST_TIMEOUT``)
DEFAULT_TIMEOUT_S = 300.0


class DistributedError(DeeprankError, RuntimeError):
    """Another rank died, stalled past the timeout, or stopped the run; the message says which."""


@dataclass(frozen=True)
class World:
    """Where this process stands: its ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that decides, shows progress and writes the model."""
        return self.rank == 0


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = env.get(name)
    if text is None:
        if default is None:
            raise DistributedError(f"{name} is not set; start distributed training with torchrun")
        return default
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"{name} must be an integer, got {text!r}") from None


def detect_world(env: Mapping[str, str] | None = None) -> World:
    """The world ``torchrun`` describes in ``env`` (default ``os.environ``); one process without it."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return World()
    size = _env_int(env, "WORLD_SIZE")
    rank = _env_int(env, "RANK")
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise DistributedError(
            f"RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={size}: expected 0 <= RANK < WORLD_SIZE "
            "and LOCAL_RANK >= 0"
        )
    return World(rank, size, local_rank)


def timeout_seconds(env: Mapping[str, str] | None = None) -> float:
    """The collective timeout in seconds: ``DEEPRANK_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`."""
    env = os.environ if env is None else env
    text = env.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise DistributedError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group of ``world`` (gloo on CPU, nccl too on CUDA); returns this rank's device.

    On CUDA each rank takes GPU ``LOCAL_RANK``. ``MASTER_ADDR`` / ``MASTER_PORT`` come from torchrun.
    """
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise DistributedError(f"{name} is not set; start distributed training with torchrun")
    timeout = timeout_seconds()
    # On GPUs nccl carries the tensors on the device (gradients, embeddings, batch-norm statistics)
    # and gloo the few numbers decided on the host (budget, errors, loss sums), without a device copy.
    with collective("joining the process group"):
        dist.init_process_group(
            "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo",
            init_method="env://",
            rank=world.rank,
            world_size=world.size,
            timeout=datetime.timedelta(seconds=timeout),
        )
    return device


def stop() -> None:
    """Leave the process group (if joined); a failure to leave cleanly after an error is ignored."""
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


_COMM_MARKERS = ("gloo", "nccl", "connection", "timed out", "timeout", "processgroup", "c10d", "socket")


def is_comm_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (e.g. from DDP's gradient all-reduce inside ``backward``) is a lost peer."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in _COMM_MARKERS)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


@contextlib.contextmanager
def collective(what: str, *, any_runtime_error: bool = True) -> Iterator[None]:
    """Turn a failed collective into one clear :class:`DistributedError` naming ``what``.

    ``any_runtime_error=False``: convert only errors that look like a lost peer (for a block that
    also runs ordinary computation, such as ``backward``).
    """
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as exc:
        if not any_runtime_error and not is_comm_failure(exc):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise DistributedError(
            f"rank {_rank()}: lost contact with the other ranks during {what}: another rank died or "
            f"did not answer within {timeout_seconds():.0f} s ({TIMEOUT_ENV}); {first}"
        ) from None


def broadcast_floats(values: Sequence[float], world: World, what: str = "a rank-0 decision") -> list[float]:
    """Rank 0's ``values`` on every rank (float64): the one decision every rank then follows."""
    if not world.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    with collective(what):
        dist.broadcast(t, src=0)
    return t.tolist()


def sum_floats(values: Sequence[float], world: World, what: str = "a sum over ranks") -> list[float]:
    """The element-wise sum of every rank's ``values`` (float64), on every rank."""
    if not world.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    with collective(what):
        dist.all_reduce(t)
    return t.tolist()


def barrier(world: World, what: str = "a barrier") -> None:
    """Wait until every rank is here (an all-reduce, so it honours the timeout on every backend)."""
    sum_floats([0.0], world, what)


def agree_on_error(error: BaseException | None, world: World, what: str = "a step") -> None:
    """Raise on every rank if ``error`` is set on any: the same :class:`DistributedError` everywhere.

    The message is the lowest failing rank's, sent as UTF-8 bytes (nothing is unpickled).
    """
    if not world.distributed:
        if error is not None:
            raise error
        return
    flag = torch.tensor([world.size - world.rank if error is not None else 0], dtype=torch.int64)
    with collective(f"{what} (error check)"):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if int(flag) == 0:
        return
    source = world.size - int(flag)
    text = f"{type(error).__name__}: {error}" if world.rank == source else ""
    data = text.encode()[:4000]
    length = torch.tensor([len(data)], dtype=torch.int64)
    with collective(f"{what} (error message)"):
        dist.broadcast(length, src=source)
        buffer = torch.zeros(int(length), dtype=torch.uint8)
        if world.rank == source:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buffer, src=source)
    message = bytes(buffer.tolist()).decode(errors="replace")
    raise DistributedError(f"rank {source} stopped the run: {message}")


# ------------------------------------------------------------------------------------ gather


def gather_rows(x: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's rows of ``x`` concatenated in rank order; gradients flow to this rank's rows only.

    Ranks may hold different numbers of rows (padded to the largest for the transfer). The other
    ranks' rows are detached copies and this rank's slot holds ``x`` itself, so ``backward`` reaches
    this rank's network through its own rows; DDP then sums the ranks' parts (see
    :func:`gather_triplets` for the scaling that makes that the single-process gradient).
    """
    if not world.distributed:
        return x
    with collective("the embedding gather"):
        sizes = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(world.size)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device))
        counts = [int(s) for s in sizes]
        most = max(counts)
        local = x.detach().contiguous()
        if x.shape[0] < most:
            local = torch.cat([local, local.new_zeros((most - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(local) for _ in range(world.size)]
        dist.all_gather(parts, local)
    pieces = [p[:n] for p, n in zip(parts, counts, strict=True)]
    pieces[world.rank] = x
    return torch.cat(pieces)


def gather_triplets(
    embeddings: torch.Tensor, labels: torch.Tensor | None, world: World
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global stacked ``[q; p; n]`` batch (queries of rank 0, 1, ..., then positives, negatives).

    That is the layout one process would have for the concatenation of the ranks' triplets, so a
    loss computed on it by every rank is the single-process loss ``L``. Each rank's backward then
    gives only its own rows' part of ``dL``; DDP *averages* the ranks' gradients, so the caller
    multiplies ``L`` by ``world.size`` to get the sum, i.e. the single-process gradient.
    """
    if not world.distributed:
        return embeddings, labels
    b = embeddings.shape[0] // 3
    # One gather for the three parts: [B, 3, D] rows are whole triplets.
    rows = gather_rows(embeddings.reshape(3, b, -1).transpose(0, 1), world)
    stacked = rows.transpose(0, 1).reshape(-1, embeddings.shape[1])
    if labels is None:
        return stacked, None
    label_rows = gather_rows(labels.reshape(3, b).t().contiguous(), world)
    return stacked, label_rows.t().reshape(-1)


# ------------------------------------------------------------------------------- batch norm


class _AllReduceSum(torch.autograd.Function):
    """``sum over ranks`` with its gradient: the backward pass sums the gradients over ranks too."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch; works on any backend.

    torch's SyncBatchNorm runs on GPUs only. Here the per-channel sums and the row count are
    all-reduced with an autograd-aware all-reduce, so the backward pass also sums the statistics'
    gradients over ranks; evaluation and a one-process run are plain batch norm.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's argument name
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        channels = input.shape[1]
        count = torch.full((1,), input.numel() // channels, dtype=input.dtype, device=input.device)
        dims = [d for d in range(input.dim()) if d != 1]
        stats = torch.cat([input.sum(dims), (input * input).sum(dims), count])
        with collective("the batch-norm statistics"):
            stats = _AllReduceSum.apply(stats)
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp_min(0.0)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return out


def _replace_batch_norm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = CPUSyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            new.to(next(iter(child.buffers()), torch.empty(0)).device)
            setattr(module, name, new)
        else:
            _replace_batch_norm(child)
    return module


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every batch norm synchronised over the ranks (in place; same state-dict keys)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _replace_batch_norm(model)


# ---------------------------------------------------------------------------------- sampling


def rank_seed(seed: int, rank: int, restart_step: int = 0) -> int:
    """The seed of rank ``rank``'s random streams: ``seed`` itself for rank 0 of a fresh run.

    ``restart_step``: the step at which sampling restarted (a resume on another world size), so the
    restarted streams do not replay the first session's.
    """
    if rank == 0 and restart_step == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) % 2**63, rank, restart_step]).generate_state(1)[0])


class ShardedOrder(EpochOrder):
    """Rank ``rank``'s shard of each pass of an :class:`EpochOrder`: positions ``rank, rank + W, ...``.

    Every rank draws the same permutation per pass (same seed), so the shards of one pass are
    disjoint and together cover it. ``position`` counts positions of the whole pass, so
    :attr:`epoch_float` is the pass fraction as on one process; the state is that of the base class.
    """

    def __init__(self, base: EpochOrder, rank: int, world_size: int) -> None:
        if base.size < world_size:
            raise ValueError(
                f"the data has {base.size} items per pass, fewer than the {world_size} ranks; "
                "use fewer processes"
            )
        self.size, self.order_rng, self.order = base.size, base.order_rng, base.order
        self.epoch, self.position = base.epoch, base.position + rank
        self.rank, self.world_size = rank, world_size

    def next(self) -> tuple[int, bool]:
        new_pass = self.position >= self.size
        if new_pass:
            self.epoch, self.position = self.epoch + 1, self.rank
            self.order = self.order_rng.permutation(self.size)
        i = int(self.order[self.position])
        self.position += self.world_size
        return i, new_pass


def shard_source(
    source: Source, world: World, seed: int, *, restart_step: int = 0, epoch: int | None = None
) -> Source:
    """Make ``source`` stream this rank's shard of each pass, with this rank's own random streams.

    A fresh run (``restart_step=0``) keeps the pass order of one process (seed ``seed + 1``) and
    reseeds the sampler (and an unlabelled source's view RNG) per rank, rank 0 keeping ``seed``.
    A restart (resume on another world size) starts a new pass ``epoch`` with fresh buffers and
    streams seeded from ``restart_step``. In place; returns ``source``.
    """
    walk = source.walk
    if restart_step:
        walk = EpochOrder(walk.size, rank_seed(seed + 1, 0, restart_step))
        walk.epoch = int(epoch or 0)
    source.walk = ShardedOrder(walk, world.rank, world.size)
    own = rank_seed(seed, world.rank, restart_step)
    sampler = getattr(source, "sampler", None)
    if sampler is not None:
        sampler.rng.seed(own)
        if restart_step:
            sampler.reset()
    rng = getattr(source, "rng", None)
    if rng is not None and hasattr(rng, "getstate"):  # the unlabelled source's random.Random
        rng.seed(own)
    return source
