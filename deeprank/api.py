"""The command line as Python calls: :func:`train`, :func:`embed`, :func:`evaluate` (and
:class:`~deeprank.index.Index` ``build/search/save/load`` for ``deeprank index`` and ``query``).

Each takes what the matching command takes, with the same defaults and the same ``device``
meaning (``auto|cpu|cuda[:N]``, :func:`deeprank.devices.resolve_device`; ``None``, the default, is
``auto`` for a checkpoint and leaves a model object where it is, :func:`model_on`)::

    import deeprank
    run = deeprank.train("photos/", output="runs/photos", epochs=5, val_every=200, val_fraction=0.1)
    index = deeprank.embed(run, "catalogue/", output="vectors", format="parquet")
    results = deeprank.evaluate(run, "labelled/", output="eval")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["build_index", "embed", "evaluate", "model_on", "train"]


def train(data: str | None = None, *, progress: bool = True, config: Any = None, **settings: Any) -> Path:
    """Train a model (``deeprank train``); returns the run (checkpoint) folder.

    ``data`` and ``settings`` are :class:`~deeprank.training.TrainConfig` fields (``output``,
    ``epochs``, ``max_steps``, ``device``, ``val_every``, ``val_fraction``, ``tensorboard``, ...);
    or pass a whole ``config``. Every step is logged to ``RUN/log.jsonl``.
    """
    from .training import TrainConfig
    from .training import train as run

    if config is None:
        config = TrainConfig(data=data, **settings)
    elif data is not None or settings:
        raise ValueError("pass either config or data/settings, not both")
    return Path(run(config, progress=progress))


def model_on(model: Any, device: str | None = None) -> Any:
    """The model of ``model`` (a model or a checkpoint directory) on ``device``.

    ``None``: a checkpoint loads on ``auto`` (a CUDA GPU if there is one), a model stays where it is.
    A checkpoint's model remembers its directory, so an index built with it records the checkpoint.
    """
    from .devices import resolve_device
    from .models.checkpoint import resolve_model

    target = (
        None
        if device is None and not isinstance(model, (str, os.PathLike))
        else resolve_device(device or "auto")
    )
    loaded, _ = resolve_model(model, device=target)
    return loaded if target is None else loaded.to(target)


def build_index(
    model: Any,
    source: str | os.PathLike,
    *,
    device: str | None = None,
    batch_size: int = 256,
    workers: int | None = None,
    progress: bool = False,
    image_column: str = "image",
) -> Any:
    """An :class:`~deeprank.index.Index` of ``source``: an image folder (:meth:`Index.build`, ids the
    relative paths), ``hf:PATH`` (its ``image_column``; ids ``NAME[row]``) or WebDataset ``.tar``
    shards (ids ``SHARD/MEMBER``). Unreadable images are skipped and listed in ``index.skipped``."""
    from .data.record_specs import is_records_spec, open_records
    from .index import Index

    net = model_on(model, device)
    if not is_records_spec(os.fspath(source)):
        return Index.build(net, source, batch_size=batch_size, progress=progress, workers=workers)
    from .embedding.records import embed_records
    from .errors import EmptyCollectionError

    records = open_records(os.fspath(source), image_column=image_column, label_column=None)
    result = embed_records(net, records, batch_size=batch_size, progress=progress)
    if len(result.kept) == 0:
        raise EmptyCollectionError(f"none of the {len(records)} images in {source} could be read")
    checkpoint = getattr(net, "checkpoint_dir", None)
    index = Index(
        result.embeddings, [records.names[i] for i in result.kept], model=net, checkpoint=checkpoint
    )
    index.skipped = records.skipped + result.skipped
    return index


def embed(
    model: Any,
    folder: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    format: str = "npy",
    device: str | None = None,
    batch_size: int = 256,
    workers: int | None = None,
    progress: bool = False,
    image_column: str = "image",
) -> Any:
    """Embed every image of ``folder`` (``deeprank embed``) with ``model`` (a model or checkpoint):
    an image folder, ``hf:PATH`` or WebDataset shards (:func:`build_index`).

    Returns the :class:`~deeprank.index.Index` (``.embeddings`` float32 ``[n, d]``, ``.ids``, ``.paths``,
    ``.skipped``); with ``output``, also exports it there as ``format`` (``npy``, ``faiss``, ``parquet``).
    """
    index = build_index(
        model,
        folder,
        device=device,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        image_column=image_column,
    )
    if output is not None:
        index.export(output, format=format)
    return index


def evaluate(
    model: Any,
    folder: str | os.PathLike,
    output: str | os.PathLike = "deeprank-eval",
    *,
    device: str | None = None,
    progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` on a labelled folder (``deeprank evaluate``); returns ``results.json``'s content.

    ``options`` go to :func:`deeprank.evaluation.evaluate_folder` (``triplets_csv``, ``k``,
    ``num_triplets``, ``baselines``, ``crops``, ``seed``). Writes results.json, results.md and the
    rank heat-map to ``output``. Metric names include pytorch-metric-learning's (``precision_at_1``,
    ``mean_average_precision_at_r``, ``r_precision``).
    """
    from .evaluation import evaluate_folder

    evaluate_folder(model_on(model, device), folder, output, progress=progress, **options)
    return json.loads((Path(output) / "results.json").read_text(encoding="utf-8"))
