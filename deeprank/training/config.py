"""``TrainConfig``: every setting of a training run, its checks, and the ``deeprank train`` flags."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MINING_MODES", "TrainConfig", "add_train_arguments", "check_config", "config_from_args"]

FASHION_MNIST_MEAN = [0.2860]
FASHION_MNIST_STD = [0.3530]


@dataclass
class TrainConfig:
    """Everything a training run needs; every field has a CLI flag (``deeprank train --help``).

    Data (``data``): ``None`` = the bundled Fashion-MNIST test split; ``"fashion-mnist:train"`` /
    ``"fashion-mnist:test"``; a folder with one sub-folder per category; a ``.csv`` of
    ``query,positive,negative`` paths; or, with ``data_kind="unlabelled"``, a flat folder where each
    image is its own instance. ``relevance``: ``None`` (class labels), ``"golden"`` (hand-crafted
    features) or a CSV of ``image_a,image_b,score`` (names relative to the image folder).

    Budget: the run stops at the first of ``epochs`` (passes over the data), ``max_steps``,
    ``max_triplets`` and ``time_budget`` (seconds, counted across resumes); if none is set, 1 epoch.
    """

    data: str | None = None
    data_kind: str = "auto"  # auto | fashion-mnist | folder | triplets | unlabelled
    relevance: str | None = None
    output: str = "runs/deeprank"
    preset: str = "small"
    image_size: int | None = None
    in_channels: int | None = None  # default: 1 for Fashion-MNIST, 3 otherwise
    embedding_dim: int | None = None
    single_scale: bool = False
    dropout: float | None = None
    convnet_weights: str | None = None
    epochs: float | None = None
    max_steps: int | None = None
    max_triplets: int | None = None
    time_budget: float | None = None
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay_lambda: float = 0.001
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 100
    margin: float = 1.0
    mining: str = "auto"  # auto | none | batch-all | semi-hard (see _mining_mode, deeprank.mining)
    out_of_class_fraction: float = 0.2
    buffer_capacity: int = 1000
    relevance_margin: float = 0.0
    max_tries: int = 32
    max_shift: int | None = None  # pixels; None: max(1, image_size // 32), see default_max_shift
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    workers: int = 0  # reserved: image decoding happens in the training process
    checkpoint_every: float = 300.0
    # End this session at this step (checkpoint kept; the schedule still spans the whole budget).
    stop_at_step: int | None = None
    resume: bool = False
    max_cache_bytes: int = 2 << 30
    model_options: dict[str, Any] = field(default_factory=dict)  # other MultiScaleNet keys (conv, fc...)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MINING_MODES = ("auto", "none", "batch-all", "semi-hard")


def check_config(config: TrainConfig) -> None:
    for name in ("batch_size",):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in ("lr", "margin"):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(config, name)}")
    for name in ("momentum", "weight_decay_lambda"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
    for name in ("epochs", "max_steps", "max_triplets", "time_budget"):
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 when given, got {value}")
    if config.schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {config.schedule!r}")
    if config.mining not in MINING_MODES:
        raise ValueError(f"mining must be one of {', '.join(MINING_MODES)}, got {config.mining!r}")
    if config.max_shift is not None and (
        isinstance(config.max_shift, bool) or not isinstance(config.max_shift, int) or config.max_shift < 0
    ):
        raise ValueError(f"max_shift must be an int >= 0 or None (auto), got {config.max_shift!r}")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``deeprank train``'s options to ``parser``; the CLI then calls :func:`config_from_args`."""
    d = TrainConfig()
    a = parser.add_argument
    a(
        "data",
        nargs="?",
        default=None,
        help="image folder (one sub-folder per category), triplet CSV, unlabelled folder (--unlabelled), "
        "or fashion-mnist:train / fashion-mnist:test; default: the bundled Fashion-MNIST test split",
    )
    a("--unlabelled", action="store_true", help="DATA is a flat folder; each image is its own instance")
    a("--relevance", default=None, help="'golden' (hand-crafted features) or a CSV image_a,image_b,score")
    a("-o", "--output", default=d.output, help=f"checkpoint directory (default {d.output})")
    a("--preset", default=d.preset, choices=["small", "paper"], help="network preset (default small)")
    a("--image-size", type=int, default=None, help="input side in pixels (default: the preset's)")
    a("--channels", type=int, choices=[1, 3], default=None, help="1 grayscale or 3 RGB (default: from data)")
    a("--embedding-dim", type=int, default=None, help="embedding size d (default: the preset's)")
    a("--single-scale", action="store_true", help="ConvNet branch only (the paper's ablation)")
    a(
        "--dropout",
        type=float,
        default=None,
        help="dropout on fully connected layers (default: the preset's, small 0, paper 0.4)",
    )
    a("--convnet-weights", default=None, help="a weight file for the ConvNet branch (.safetensors/.pt)")
    a("--epochs", type=float, default=None, help="passes over the data")
    a("--max-steps", type=int, default=None, help="stop after this many steps")
    a("--max-triplets", type=int, default=None, help="stop after this many triplets")
    a("--time-budget", type=float, default=None, help="stop after this many seconds (across resumes)")
    a("--batch-size", type=int, default=d.batch_size, help=f"triplets per step (default {d.batch_size})")
    a("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    a("--momentum", type=float, default=d.momentum, help=f"Nesterov momentum (default {d.momentum})")
    a(
        "--lambda",
        dest="weight_decay_lambda",
        type=float,
        default=d.weight_decay_lambda,
        help=f"lambda of lambda*||W||^2 (default {d.weight_decay_lambda})",
    )
    a("--schedule", choices=["cosine", "constant"], default=d.schedule, help="learning-rate schedule")
    a("--margin", type=float, default=d.margin, help=f"gap g of the ranking hinge (default {d.margin})")
    a(
        "--mining",
        choices=list(MINING_MODES),
        default=d.mining,
        help="in-batch mining: batch-all (every active triplet of the batch), semi-hard, or none (the "
        "sampler's triplets only); auto (default) = batch-all when categories are the relevance",
    )
    a(
        "--out-of-class",
        dest="out_of_class_fraction",
        type=float,
        default=d.out_of_class_fraction,
        help=f"share of out-of-class negatives (default {d.out_of_class_fraction})",
    )
    a("--buffer-capacity", type=int, default=d.buffer_capacity, help="images per category buffer")
    a("--relevance-margin", type=float, default=d.relevance_margin, help="T_r for in-class negatives")
    a(
        "--max-shift",
        type=int,
        default=d.max_shift,
        help="random pixel shift augmentation in pixels (default: image size // 32, at least 1; 0: off)",
    )
    a("--seed", type=int, default=d.seed, help="random seed (runs repeat exactly on one device)")
    a("--device", default=d.device, help="auto, cpu or cuda (default auto)")
    a("--threads", type=int, default=None, help="torch CPU threads")
    a("--checkpoint-every", type=float, default=d.checkpoint_every, help="seconds between checkpoints")
    a("--resume", action="store_true", help="continue the run in --output")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` for parsed ``deeprank train`` arguments."""
    return TrainConfig(
        data=args.data,
        data_kind="unlabelled" if args.unlabelled else "auto",
        relevance=args.relevance,
        output=args.output,
        preset=args.preset,
        image_size=args.image_size,
        in_channels=args.channels,
        embedding_dim=args.embedding_dim,
        single_scale=args.single_scale,
        dropout=args.dropout,
        convnet_weights=args.convnet_weights,
        epochs=args.epochs,
        max_steps=args.max_steps,
        max_triplets=args.max_triplets,
        time_budget=args.time_budget,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay_lambda=args.weight_decay_lambda,
        schedule=args.schedule,
        margin=args.margin,
        mining=args.mining,
        out_of_class_fraction=args.out_of_class_fraction,
        buffer_capacity=args.buffer_capacity,
        relevance_margin=args.relevance_margin,
        max_shift=args.max_shift,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
    )
