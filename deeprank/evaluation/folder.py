"""``evaluate_folder``: a model (and the baselines) measured on a labelled image folder, end to end.

The folder is decoded one batch at a time (:func:`deeprank.embedding.load_images`, the one decode
path) and each batch goes through every method before the next is read, so what is held is each
method's embeddings plus one batch of ``uint8`` pixels, never the folder's images; only the crop
sources' images are decoded again for the crops.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.augment import random_crops
from ..data.triplet_csv import read_triplet_csv
from ..embedding.embed import embed_tensor, load_images
from ..errors import DeeprankError, EmptyCollectionError
from ..models.checkpoint import resolve_model
from ..models.multiscale import build_model
from ..progress import Progress
from .methods import Embedder, baseline_embedders, evaluate_methods
from .metrics import triplet_ranks
from .plots import rank_heatmap
from .report import write_results
from .triplets import labelled_collection, sample_labelled_triplets

__all__ = ["evaluate_folder"]

#: Images decoded at a time: the pixels evaluation holds at once are one such batch.
LOAD_BATCH = 1024


def _embedders(net: torch.nn.Module, baselines: bool, seed: int) -> dict[str, Embedder]:
    """The methods measured: the baselines and the untrained network (with ``baselines``), the model."""
    embedders: dict[str, Embedder] = {}
    if baselines:
        embedders.update(baseline_embedders())
        torch.manual_seed(seed)
        untrained = build_model(dict(net.config))
        embedders["untrained network"] = lambda x: embed_tensor(untrained, x)
    embedders["model"] = lambda x: embed_tensor(net, x)
    return embedders


def _embed_collection(
    embedders: dict[str, Embedder], files: Sequence[Path], size: int, channels: int, progress: bool
) -> tuple[dict[str, np.ndarray], list[int], list[tuple[str, str]]]:
    """Every method's embeddings of the readable ``files``: ``(embeddings, positions kept, skipped)``."""
    bar = Progress("embedding", len(files), enabled=progress)
    out: dict[str, np.ndarray] = {}
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    for start in range(0, len(files), LOAD_BATCH):
        batch, ok, bad = load_images(files[start : start + LOAD_BATCH], size, channels)
        if ok:
            for name, embed in embedders.items():
                emb = embed(batch)
                if name not in out:  # sized for every file; rows of skipped files are cut below
                    out[name] = np.empty((len(files), emb.shape[1]), dtype=np.float32)
                out[name][len(kept) : len(kept) + len(ok)] = emb
        kept.extend(start + i for i in ok)
        skipped.extend(bad)
        bar.advance(len(ok) + len(bad))
    if not kept:
        raise EmptyCollectionError(f"none of the {len(files)} images of the folder could be read")
    return {name: emb[: len(kept)] for name, emb in out.items()}, kept, skipped


def _csv_triplets(triplets_csv: str | os.PathLike, files: Sequence[Path], folder: Any) -> np.ndarray:
    """The rows of a triplet CSV as indices of ``files`` (every image must be one of them)."""
    where = {f.resolve(): i for i, f in enumerate(files)}
    rows = []
    for q, p, n in read_triplet_csv(triplets_csv):
        try:
            rows.append([where[Path(q).resolve()], where[Path(p).resolve()], where[Path(n).resolve()]])
        except KeyError as exc:
            raise DeeprankError(f"triplet image {exc.args[0]} is not a readable image of {folder}") from None
    return np.asarray(rows, dtype=np.int64)


def _crops(
    files: Sequence[Path], count: int, seed: int, size: int, channels: int
) -> tuple[np.ndarray | None, torch.Tensor | None]:
    """``count`` random source images (rows of ``files``) and a random crop of each, or ``(None, None)``.

    The sources are drawn among the readable images, known only after the pass, so they are decoded
    again here (``count`` images) instead of keeping every image in case it is drawn."""
    if count <= 0:
        return None, None
    sources = np.random.default_rng(seed).choice(len(files), size=min(count, len(files)), replace=False)
    images, _, bad = load_images([files[i] for i in sources], size, channels)
    if bad:
        raise DeeprankError(f"crop source {bad[0][0]} can no longer be read: {bad[0][1]}")
    return sources, random_crops(images, seed=seed)


def evaluate_folder(
    model: Any,
    folder: str | os.PathLike,
    output: str | os.PathLike,
    *,
    triplets_csv: str | os.PathLike | None = None,
    k: int = 30,
    num_triplets: int = 2000,
    baselines: bool = False,
    crops: int = 500,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Evaluate a model (checkpoint directory or model) on a labelled folder; write the table and heat-map.

    Labels are the first sub-folder of each image. Triplets come from ``triplets_csv`` (paths inside
    ``folder``) or are sampled (positive same category, negative another). With ``baselines`` the
    hand-crafted features and the untrained network are measured on the same data. Memory: each
    method's embeddings, one batch of :data:`LOAD_BATCH` decoded images and the ``crops`` crop images
    (module docstring). Returns the files written.
    """
    net, _ = resolve_model(model)
    size, channels = int(net.image_size), int(net.in_channels)
    collection = labelled_collection(folder)
    embedders = _embedders(net, baselines, seed)
    embeddings, kept, skipped = _embed_collection(embedders, collection.paths, size, channels, progress)
    files = [collection.paths[i] for i in kept]
    labels = collection.labels[kept]
    if triplets_csv is not None:
        triplets = _csv_triplets(triplets_csv, files, folder)
    else:
        triplets = sample_labelled_triplets(labels, num_triplets, seed=seed)
    crop_sources, crop_images = _crops(files, crops, seed, size, channels)
    methods = {
        name: (embeddings[name], None if crop_images is None else embed(crop_images))
        for name, embed in embedders.items()
    }
    table = evaluate_methods(methods, labels, triplets, k=k, ks=(1, 10), crop_sources=crop_sources)
    out = Path(output)
    info = {
        "folder": str(Path(folder).resolve()),
        "images": len(files),
        "skipped": len(collection.skipped) + len(skipped),
        "triplets": f"{len(triplets)} " + ("from " + str(triplets_csv) if triplets_csv else "sampled"),
    }
    written = list(write_results(table, out, info))
    rp, rn = triplet_ranks(embeddings["model"], triplets)
    written.append(rank_heatmap(rp, rn, out / "heatmap.png"))
    return written
