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

__all__ = ["embed", "evaluate", "model_on", "train"]


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
) -> Any:
    """Embed every image under ``folder`` (``deeprank embed``) with ``model`` (a model or checkpoint).

    Returns the :class:`~deeprank.index.Index` (``.embeddings`` float32 ``[n, d]``, ``.ids``, ``.paths``,
    ``.skipped``); with ``output``, also exports it there as ``format`` (``npy``, ``faiss``, ``parquet``).
    """
    from .index import Index

    index = Index.build(
        model_on(model, device), folder, batch_size=batch_size, progress=progress, workers=workers
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
