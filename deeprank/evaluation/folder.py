"""``evaluate_folder``: a model (and the baselines) measured on a labelled image folder, end to end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.augment import random_crops
from ..data.triplet_csv import read_triplet_csv
from ..embedding.embed import embed_tensor, load_images
from ..errors import DeeprankError
from ..models.checkpoint import resolve_model
from ..models.multiscale import build_model
from ..progress import Progress
from .methods import Embedder, baseline_embedders, evaluate_methods
from .metrics import triplet_ranks
from .plots import rank_heatmap
from .report import write_results
from .triplets import labelled_collection, sample_labelled_triplets

__all__ = ["evaluate_folder"]


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
    hand-crafted features and the untrained network are measured on the same data. Images are held in
    memory as tensors (fine for tens of thousands of small images). Returns the files written.
    """
    net, _ = resolve_model(model)
    collection = labelled_collection(folder)
    files, labels = collection.paths, collection.labels
    bar = Progress("loading", len(files), enabled=progress)
    parts, kept, skipped = [], [], []
    for start in range(0, len(files), 1024):
        batch, ok, bad = load_images(files[start : start + 1024], net.image_size, net.in_channels)
        parts.append(batch)
        kept.extend(start + i for i in ok)
        skipped.extend(bad)
        bar.advance(min(1024, len(files) - start))
    images = torch.cat(parts)
    files = [files[i] for i in kept]
    lab = np.asarray([labels[i] for i in kept])
    if triplets_csv is not None:
        where = {f.resolve(): i for i, f in enumerate(files)}
        rows = []
        for q, p, n in read_triplet_csv(triplets_csv):
            try:
                rows.append([where[Path(q).resolve()], where[Path(p).resolve()], where[Path(n).resolve()]])
            except KeyError as exc:
                raise DeeprankError(
                    f"triplet image {exc.args[0]} is not a readable image of {folder}"
                ) from None
        triplets = np.asarray(rows, dtype=np.int64)
    else:
        triplets = sample_labelled_triplets(lab, num_triplets, seed=seed)
    rng = np.random.default_rng(seed)
    crop_sources = rng.choice(len(files), size=min(crops, len(files)), replace=False) if crops > 0 else None
    crop_images = random_crops(images[crop_sources], seed=seed) if crop_sources is not None else None

    embedders: dict[str, Embedder] = {}
    if baselines:
        embedders.update(baseline_embedders())
        torch.manual_seed(seed)
        untrained = build_model(dict(net.config))
        embedders["untrained network"] = lambda x: embed_tensor(untrained, x)
    embedders["model"] = lambda x: embed_tensor(net, x)
    methods = {
        name: (fn(images), None if crop_images is None else fn(crop_images)) for name, fn in embedders.items()
    }
    table = evaluate_methods(methods, lab, triplets, k=k, ks=(1, 10), crop_sources=crop_sources)
    out = Path(output)
    info = {
        "folder": str(Path(folder).resolve()),
        "images": len(files),
        "skipped": len(skipped),
        "triplets": f"{len(triplets)} " + ("from " + str(triplets_csv) if triplets_csv else "sampled"),
    }
    written = list(write_results(table, out, info))
    rp, rn = triplet_ranks(methods["model"][0], triplets)
    written.append(rank_heatmap(rp, rn, out / "heatmap.png"))
    return written
