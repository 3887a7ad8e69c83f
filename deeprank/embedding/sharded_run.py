"""Running a sharded embedding job: the file list cut into shards, each embedded by an *engine* and
written through :class:`~deeprank.embedding.shards.ShardWriter` (format and resume rules there).

Engines: ``"local"`` (this process, decoding in worker processes) and ``"ray"`` (a Ray Data pipeline,
:mod:`deeprank.embedding.ray_engine`). Both write the same files; a rerun skips finished shards.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models.checkpoint import resolve_model
from ..progress import Progress
from .embed import embed_images, list_folder
from .shards import DEFAULT_SHARD_SIZE, ShardRun, ShardWriter

__all__ = ["ENGINES", "embed_to_shards"]

ENGINES = ("local", "ray")


def _embed_local(
    writer: ShardWriter, model: torch.nn.Module, batch_size: int, workers: int | None, progress: bool
) -> None:
    bar = Progress("embedding", sum(len(writer.shard_files(i)) for i in writer.pending), enabled=progress)
    for i in writer.pending:
        files = writer.shard_files(i)
        res = embed_images(model, files, batch_size=batch_size, workers=workers)
        writer.write(i, res.embeddings, res.kept.tolist(), res.skipped)
        bar.advance(len(files))


def embed_to_shards(
    model: torch.nn.Module | str | os.PathLike,
    folder: str | os.PathLike,
    output: str | os.PathLike,
    *,
    engine: str = "local",
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 256,
    workers: int | None = None,
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float = 0.0,
    recursive: bool = True,
    progress: bool = True,
) -> ShardRun:
    """Embed every image under ``folder`` into a resumable run folder ``output`` (module docstring).

    Args:
        model: a model or a checkpoint directory (Ray actors get a copy of the model).
        engine: ``"local"`` (this process, ``workers`` decode processes) or ``"ray"`` (needs
            ``pip install "deeprank[ray]"``; connects to ``address``, e.g. ``"auto"``, or uses the
            running Ray instance, or starts a local one).
        shard_size: files per shard; a rerun must use the same value.
        actors: Ray embedding actors (default: as many as the cluster's CPUs allow, or its GPUs
            with ``gpus_per_actor > 0``); ``gpus_per_actor``: GPUs each actor holds (0: CPU actors).

    Returns a :class:`ShardRun`; unreadable files are skipped and listed in ``ShardRun.skipped``.
    A rerun into the same ``output`` skips the shards already written.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    model, checkpoint = resolve_model(model)
    root = Path(folder).resolve()  # both engines read (and report) the same absolute paths
    files = list_folder(root, recursive)
    writer = ShardWriter(output, root, files, model, checkpoint, shard_size)
    pending = list(writer.pending)
    if engine == "local":
        _embed_local(writer, model, batch_size, workers, progress)
    else:
        from .ray_engine import embed_with_ray

        embed_with_ray(
            writer,
            model,
            batch_size=batch_size,
            address=address,
            actors=actors,
            gpus_per_actor=gpus_per_actor,
            progress=progress,
        )
    embedded, skipped = writer.finish()
    return ShardRun(
        output=Path(output),
        dim=writer.dim,
        shards=writer.shards,
        written=len(pending),
        resumed=writer.shards - len(pending),
        embedded=embedded,
        skipped=skipped,
    )
