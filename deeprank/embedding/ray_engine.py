"""The Ray engine of :func:`deeprank.embedding.embed_to_shards`: many machines, one shard folder.

Ray Data runs the pipeline (``pip install "deeprank[ray]"``; Ray is imported only here, when used):

1. the file list of the shards still to write, one block per shard;
2. ``map_batches`` decode tasks: :func:`deeprank.embedding.loader.decode_source`, the one decode
   path, so pixels and skip reasons are those of the local engine;
3. ``map_batches`` an actor pool of embedders (the model sent once and loaded once per actor). GPU
   actors (``gpus_per_actor > 0``, one per GPU by default) are fed by decode tasks on the cluster's
   CPUs; CPU actors (one CPU each, one per CPU by default) ask for the same resources as the decode
   tasks, so Ray fuses the two stages and each actor decodes its own batches (no pixels cross the
   object store);
4. the driver gathers each shard's rows and writes it through :class:`~deeprank.embedding.shards.ShardWriter`
   as soon as it is complete. Rows come back in order (``preserve_order``), so at most a shard or two
   are held at once: ``shard_size x dim`` floats each. Only the driver writes, so the output needs no
   storage shared by the machines; the images, though, must be readable at the same path on every
   node that runs decode tasks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MissingExtraError
from ..progress import Progress
from .embed import embed_tensor, model_geometry
from .loader import decode_source
from .shards import ShardWriter

__all__ = ["embed_with_ray"]


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingExtraError(f"the Ray engine needs Ray: pip install 'deeprank[ray]' ({exc})") from None
    return ray


def decode_batch(batch: dict[str, np.ndarray], image_size: int, channels: int) -> dict[str, np.ndarray]:
    """A Ray Data batch of file rows with their pixels (zeros where unreadable) and skip reasons."""
    pixels = np.zeros((len(batch["path"]), channels, image_size, image_size), dtype=np.uint8)
    reasons = []
    for j, path in enumerate(batch["path"]):
        decoded, reason = decode_source(Path(str(path)), image_size, channels)
        if decoded is not None:
            pixels[j] = decoded.numpy()
        reasons.append(reason or "")
    return {**batch, "pixels": pixels, "reason": np.asarray(reasons, dtype=object)}


class Embedder:
    """The actor of the pool: holds the model (loaded once), embeds the readable rows of a batch."""

    def __init__(self, model: torch.nn.Module, device: str, batch_size: int) -> None:
        self.model = model.to(device).eval()
        self.dim = model_geometry(model)[2]
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray([r == "" for r in batch["reason"]], dtype=bool)
        vectors = np.zeros((ok.size, self.dim), dtype=np.float32)
        if ok.any():
            vectors[ok] = embed_tensor(self.model, torch.from_numpy(batch["pixels"][ok]), self.batch_size)
        rest = {k: v for k, v in batch.items() if k != "pixels"}
        return {**rest, "vector": vectors}


class _Gather:
    """Collects rows per shard and writes each shard once all its files are in."""

    def __init__(self, writer: ShardWriter) -> None:
        self.writer = writer
        self.parts: dict[int, list[dict[str, np.ndarray]]] = {}
        self.count: dict[int, int] = {}

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for shard in np.unique(batch["shard"]).tolist():
            rows = batch["shard"] == shard
            self.parts.setdefault(shard, []).append({k: v[rows] for k, v in batch.items()})
            self.count[shard] = self.count.get(shard, 0) + int(rows.sum())
            if self.count[shard] == len(self.writer.shard_files(shard)):
                self._write(shard)

    def _write(self, shard: int) -> None:
        parts = self.parts.pop(shard)
        cols = {k: np.concatenate([p[k] for p in parts]) for k in ("position", "path", "reason", "vector")}
        order = np.argsort(cols["position"], kind="stable")
        reasons = [str(r) for r in cols["reason"][order]]
        kept = [j for j, r in enumerate(reasons) if r == ""]
        paths = [str(p) for p in cols["path"][order]]
        skipped = [(paths[j], r) for j, r in enumerate(reasons) if r != ""]
        self.writer.write(shard, cols["vector"][order][kept], kept, skipped)


def _file_blocks(writer: ShardWriter) -> list[Any]:
    """One Arrow table of ``(shard, position, path)`` rows per pending shard."""
    import pyarrow as pa

    tables = []
    for i in writer.pending:
        paths = [str(f) for f in writer.shard_files(i)]
        tables.append(
            pa.table(
                {
                    "shard": pa.array(np.full(len(paths), i, dtype=np.int64)),
                    "position": pa.array(np.arange(len(paths), dtype=np.int64)),
                    "path": pa.array(paths, type=pa.string()),
                }
            )
        )
    return tables


@contextmanager
def _data_context(ray: Any) -> Iterator[None]:
    """Ray Data returns rows in order and draws no bars of its own (ours counts files); restored after."""
    ctx = ray.data.DataContext.get_current()
    before = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = before


def _on_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """The model to send to the actors, on the CPU (a copy when the caller's is elsewhere)."""
    if all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()]):
        return model
    return copy.deepcopy(model).cpu()


def _pool_size(ray: Any, actors: int | None, gpus_per_actor: float) -> int:
    if actors is not None:
        if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
            raise ValueError(f"actors must be a positive int, got {actors!r}")
        return actors
    resources = ray.cluster_resources()
    if gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_actor))
    return max(1, int(resources.get("CPU", 1)))  # CPU actors decode their batches too (fused stages)


def embed_with_ray(
    writer: ShardWriter,
    model: torch.nn.Module,
    *,
    batch_size: int = 256,
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float = 0.0,
    progress: bool = True,
) -> None:
    """Write ``writer``'s pending shards with a Ray Data pipeline (module docstring).

    Uses the Ray instance already initialised in this process, else connects to ``address`` (``"auto"``:
    a running cluster), else starts a local instance.
    """
    if not isinstance(gpus_per_actor, (int, float)) or isinstance(gpus_per_actor, bool) or gpus_per_actor < 0:
        raise ValueError(f"gpus_per_actor must be a number >= 0, got {gpus_per_actor!r}")
    ray = _import_ray()
    if not writer.pending:
        return
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    size, channels, _ = model_geometry(model)
    pool = _pool_size(ray, actors, gpus_per_actor)
    bar = Progress("embedding", sum(len(writer.shard_files(i)) for i in writer.pending), enabled=progress)
    gather = _Gather(writer)
    with _data_context(ray):
        ds = ray.data.from_arrow(_file_blocks(writer))
        ds = ds.map_batches(
            decode_batch,
            fn_kwargs={"image_size": size, "channels": channels},
            batch_size=batch_size,
            batch_format="numpy",
        )
        ds = ds.map_batches(
            Embedder,
            fn_constructor_kwargs={
                "model": _on_cpu(model),
                "device": "cuda" if gpus_per_actor > 0 else "cpu",
                "batch_size": batch_size,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=1,
            num_gpus=gpus_per_actor or None,
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            gather.add(batch)
            bar.advance(len(batch["shard"]))
