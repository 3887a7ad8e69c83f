"""Training: the Deep Ranking loop, its configuration, data sources, checkpoints and resume.

``train(TrainConfig())`` trains the small multiscale network on the bundled Fashion-MNIST with the
online reservoir sampler (class labels as relevance) and writes a checkpoint directory. The loop:

* triplets come from a *source* (bundled/array data, image folder, triplet CSV, unlabelled folder);
* each step stacks ``[q; p; n]`` into one ``[3B, C, S, S]`` batch, applies random pixel shifts
  (batched in torch; by default up to ``S // 32`` pixels, at least 1), runs the network once
  (channels-last on CPU) and applies the per-triplet hinge, either to the sampled triplets or, with
  in-batch mining (``mining``, :mod:`deeprank.mining`), to triplets mined from the same embeddings
  (``auto``: batch-all where categories are the relevance);
* SGD with Nesterov momentum; weight decay ``2 * lambda`` (the gradient of ``lambda ||W||^2``, with
  the batch loss reduced by its mean); dropout as configured in the model (the paper keeps 60%);
* the learning rate follows a cosine from ``lr`` to ``0`` over the run's budget (steps, triplets,
  epochs or seconds, whichever ends first) or stays constant (``schedule="constant"``);
* checkpoints (``deeprank.checkpoint``) are written atomically every ``checkpoint_every`` seconds and
  at the end; ``resume=True`` continues from the output directory with the same optimizer, counters,
  sampler and random states, so an interrupted step-budgeted run ends where an uninterrupted one would.

Unreadable images are skipped with one warning each and counted (``config.json["progress"]["skipped"]``).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..data.augment import random_shift
from ..data.images import SkippedImages
from ..devices import resolve_device
from ..models.checkpoint import CONFIG_FILE, load_config, load_train_state, save_checkpoint
from ..models.multiscale import MultiScaleNet, build_model
from ..models.presets import preset_config
from ..nn import TripletRankingLoss
from ..progress import Progress
from .config import TrainConfig, check_config
from .mining import batch_all_triplet_loss, semi_hard_negatives
from .relevance import ClassRelevance
from .sources import InstanceSource, SampledSource, Source, build_source, data_kind

__all__ = ["default_max_shift", "train"]


def _mining_mode(config: TrainConfig, source: Source) -> str:
    """``auto``: batch-all where categories are the whole relevance, else the sampler's triplets.

    Categories are the whole relevance for class labels and for unlabelled instances (each image its
    own category). A golden-feature or table relevance orders images *inside* a category, which only
    the sampled triplets carry; a triplet CSV has no categories at all.
    """
    if config.mining != "auto":
        return config.mining
    if isinstance(source, InstanceSource):
        return "batch-all"
    if isinstance(source, SampledSource) and isinstance(source.relevance, ClassRelevance):
        return "batch-all"
    return "none"


def _budget_fraction(config: TrainConfig, step: int, triplets: int, epoch: float, elapsed: float) -> float:
    fractions = []
    if config.max_steps:
        fractions.append(step / config.max_steps)
    if config.max_triplets:
        fractions.append(triplets / config.max_triplets)
    if config.epochs:
        fractions.append(epoch / config.epochs)
    if config.time_budget:
        fractions.append(elapsed / config.time_budget)
    if not fractions:
        fractions.append(epoch)  # default budget: one epoch
    return max(fractions)


def _show(
    bar: Progress,
    config: TrainConfig,
    step: int,
    triplets: int,
    loss: float,
    rate: float,
    epoch: float,
    elapsed: float,
    force: bool = False,
) -> None:
    text = f"step {step} | {triplets} triplets | loss {loss:.4f} | {rate:.0f} triplets/s | {elapsed:.0f}s"
    bar.show(text, _budget_fraction(config, step, triplets, epoch, elapsed), force=force)


def default_max_shift(image_size: int) -> int:
    """The default pixel-shift range: about 3% of the side, at least 1 (1 px at 28 px, 7 px at 225 px).

    Shifts teach the position tolerance real photos need; on centred 28 px Fashion-MNIST larger ones
    measured worse (2 px below 1 px below none, docs/results.md), so the default stays small.
    """
    return max(1, int(image_size) // 32)


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train a model as ``config`` says; returns the checkpoint directory (``config.output``).

    With ``config.resume`` and a checkpoint in ``config.output`` holding a training state, the run
    continues from it (the saved training configuration wins for everything but the budget fields,
    ``output``, ``device``, ``threads`` and ``checkpoint_every``).
    """
    check_config(config)
    output = Path(config.output)
    state = None
    if config.resume and (output / CONFIG_FILE).is_file():
        saved = load_config(output)
        state = load_train_state(output)
        if state is None:
            raise ValueError(f"{output} has no training state to resume from (train_state.pt missing)")
        keep = {
            "epochs",
            "max_steps",
            "max_triplets",
            "time_budget",
            "output",
            "device",
            "threads",
            "checkpoint_every",
            "resume",
            "stop_at_step",
        }
        merged = {k: v for k, v in saved.get("train", {}).items() if k in TrainConfig.__dataclass_fields__}
        merged.update({k: getattr(config, k) for k in keep})
        config = TrainConfig(**merged)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    kind = data_kind(config)
    channels = config.in_channels or (1 if kind == "fashion-mnist" else 3)
    skipped = SkippedImages()

    if state is not None:
        model = build_model(load_config(output)["model"])
        image_size = model.image_size
    else:
        image_size = int(preset_config(config.preset, image_size=config.image_size)["image_size"])
    source, norm = build_source(config, image_size, channels, skipped)
    if state is None:
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
    else:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(output / "model.safetensors")))
    model.to(device).train()
    # On CPU, channels-last convolutions, pooling and batch norm run about 1.5x faster (oneDNN's
    # native layout); CUDA keeps the default. Weights are saved contiguous either way.
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model.to(memory_format=memory_format)
    mining = _mining_mode(config, source)
    max_shift = default_max_shift(image_size) if config.max_shift is None else config.max_shift

    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
        weight_decay=2.0 * config.weight_decay_lambda,
    )
    loss_fn = TripletRankingLoss(margin=config.margin)
    augment_rng = torch.Generator().manual_seed(config.seed + 2)
    step, triplets, elapsed_before, loss_avg = 0, 0, 0.0, float("nan")
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        source.load_state_dict(state["source"])
        augment_rng.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        step, triplets = int(state["step"]), int(state["triplets"])
        elapsed_before, loss_avg = float(state["elapsed"]), float(state["loss_avg"])
        skipped.paths |= set(state.get("skipped", []))

    def save(final: bool) -> None:
        train_state = {
            "optimizer": optimizer.state_dict(),
            "source": source.state_dict(),
            "augment_rng": augment_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "step": step,
            "triplets": triplets,
            "elapsed": elapsed_before + (time.monotonic() - start),
            "loss_avg": loss_avg,
            "skipped": sorted(skipped.paths),
        }
        info = {
            "train": {k: v for k, v in config.to_dict().items()},
            "data": source.describe(),
            "progress": {
                "step": step,
                "triplets": triplets,
                "epoch": round(source.epoch_float, 4),
                "elapsed_s": round(train_state["elapsed"], 2),
                "loss": loss_avg,
                "skipped": skipped.count,
                "finished": final
                and _budget_fraction(config, step, triplets, source.epoch_float, train_state["elapsed"])
                >= 1.0,
                "triplets_per_s": round(rate, 1),
            },
        }
        save_checkpoint(output, model, info, train_state)

    bar = Progress("training", enabled=progress, interval=0.5)
    start = time.monotonic()
    last_save = start
    rate, rate_t0, rate_n0 = 0.0, start, triplets
    while True:
        elapsed = elapsed_before + (time.monotonic() - start)
        fraction = _budget_fraction(config, step, triplets, source.epoch_float, elapsed)
        if fraction >= 1.0 or (config.stop_at_step is not None and step >= config.stop_at_step):
            break
        lr = config.lr
        if config.schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))
        if config.warmup_steps and step < config.warmup_steps:
            lr *= (step + 1) / config.warmup_steps
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch, labels = source.next_batch(config.batch_size)
        x = batch.to(device, non_blocking=True)
        x = x.float().div_(255.0) if not x.is_floating_point() else x
        if max_shift:
            x = random_shift(x, max_shift, augment_rng)
        embeddings = model(x.contiguous(memory_format=memory_format))
        if mining == "batch-all" and labels is not None:
            loss = batch_all_triplet_loss(embeddings, labels.to(device), config.margin, augment_rng)
        elif mining == "semi-hard" and labels is not None:
            loss = loss_fn(*semi_hard_negatives(embeddings, labels.to(device), config.margin))
        else:
            loss = loss_fn(embeddings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        triplets += batch.shape[0] // 3
        value = float(loss.detach())
        loss_avg = value if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * value
        now = time.monotonic()
        if now - rate_t0 >= 2.0:
            rate, rate_t0, rate_n0 = (triplets - rate_n0) / (now - rate_t0), now, triplets
        elif rate == 0.0 and now > start:
            rate = (triplets - rate_n0) / max(now - rate_t0, 1e-9)
        _show(bar, config, step, triplets, loss_avg, rate, source.epoch_float, elapsed_before + now - start)
        if not math.isfinite(value):
            bar.close()
            raise FloatingPointError(f"training diverged at step {step} (loss {value}); lower --lr")
        if config.checkpoint_every and now - last_save >= config.checkpoint_every:
            save(final=False)
            last_save = time.monotonic()
    _show(
        bar,
        config,
        step,
        triplets,
        loss_avg,
        rate,
        source.epoch_float,
        elapsed_before + time.monotonic() - start,
        True,
    )
    bar.close()
    save(final=True)
    if skipped.count:
        print(f"skipped {skipped.count} unreadable image(s)", file=sys.stderr)
    return output
