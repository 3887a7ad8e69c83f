"""The training state: what a checkpoint keeps so ``resume=True`` continues a run exactly.

* :func:`save_training` writes a checkpoint of a run: the weights, ``config.json`` (the training
  settings, the data description and the progress counters) and the training state of
  :func:`capture_state` (optimizer, counters, source and every random state);
* :func:`resume_point` reads one back for a resumed run: the model through
  :func:`~deeprank.models.checkpoint.load_model`, the state, and the configuration merged by
  :func:`resumed_config` (the saved settings win but for :data:`CALLER_FIELDS`);
* :func:`restore_state` puts the state back into a freshly built trainer.

The bytes of ``train_state.safetensors`` are written and read by :mod:`deeprank.models.checkpoint`
(``save_checkpoint(state=...)`` and ``load_train_state``, no pickle); this module decides what goes
in it. A resumed run takes its weights and settings from that one file, which is whole and
consistent by itself after a kill at any point of a save.

:func:`check_output` keeps a fresh run from silently replacing what is in its output folder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..data.images import SkippedImages
from ..errors import DeeprankError
from ..models.checkpoint import (
    CONFIG_FILE,
    LEGACY_STATE_FILE,
    STATE_FILE,
    load_config,
    load_model,
    load_state_model,
    load_train_state,
    save_checkpoint,
)
from .config import TrainConfig
from .sources import Source

__all__ = [
    "CALLER_FIELDS",
    "Counters",
    "ResumePoint",
    "Resumable",
    "capture_state",
    "check_output",
    "restore_state",
    "resume_point",
    "resumed_config",
    "save_training",
]

#: Settings a resumed run takes from the caller, not from the checkpoint: the budget (a run may be
#: extended), where it runs and how often it saves. Everything else must match the saved run.
CALLER_FIELDS = (
    "epochs",
    "max_steps",
    "max_triplets",
    "time_budget",
    "stop_at_step",
    "output",
    "device",
    "threads",
    "checkpoint_every",
    "resume",
    "overwrite",
)


@dataclass
class Counters:
    """How far a run has come: steps, triplets, training seconds of earlier sessions, the loss average."""

    step: int = 0
    triplets: int = 0
    elapsed_before: float = 0.0
    loss_avg: float = math.nan  # exponential moving average (weight 0.02) of the step losses

    def record(self, triplets: int, loss: float) -> None:
        """Count one step of ``triplets`` triplets with loss ``loss``."""
        self.step += 1
        self.triplets += triplets
        self.loss_avg = loss if math.isnan(self.loss_avg) else 0.98 * self.loss_avg + 0.02 * loss


class Resumable(Protocol):
    """The parts of a trainer (:class:`deeprank.training.loop.Trainer`) that the training state covers."""

    config: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    source: Source
    augment_rng: torch.Generator
    device: torch.device
    counters: Counters
    skipped: SkippedImages


def capture_sampling(trainer: Resumable) -> dict[str, Any]:
    """What the next triplets and random draws depend on: the source's sampler and the generators."""
    device = trainer.device
    return {
        "source": trainer.source.state_dict(),
        "augment_rng": trainer.augment_rng.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_sampling(trainer: Resumable, state: Mapping[str, Any]) -> None:
    """Put a :func:`capture_sampling` state back."""
    trainer.source.load_state_dict(state["source"])
    trainer.augment_rng.set_state(state["augment_rng"])
    torch.set_rng_state(state["torch_rng"])
    if trainer.device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], trainer.device)


def capture_state(trainer: Resumable, elapsed: float) -> dict[str, Any]:
    """The training state of ``trainer`` after ``elapsed`` training seconds (all sessions)."""
    return {
        "train": trainer.config.to_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        **capture_sampling(trainer),
        "step": trainer.counters.step,
        "triplets": trainer.counters.triplets,
        "elapsed": elapsed,
        "loss_avg": trainer.counters.loss_avg,
        "skipped": sorted(trainer.skipped.paths),
    }


def restore_state(trainer: Resumable, state: Mapping[str, Any]) -> None:
    """Put a :func:`capture_state` state back into a trainer built from the same configuration."""
    trainer.optimizer.load_state_dict(state["optimizer"])
    restore_sampling(trainer, state)
    trainer.counters = Counters(
        step=int(state["step"]),
        triplets=int(state["triplets"]),
        elapsed_before=float(state["elapsed"]),
        loss_avg=float(state["loss_avg"]),
    )
    trainer.skipped.paths |= set(state.get("skipped", []))


def save_training(trainer: Resumable, elapsed: float, *, finished: bool, rate: float) -> Path:
    """Checkpoint ``trainer`` into ``config.output`` (atomically, file by file); returns the directory.

    ``finished``: whether the budget is spent; ``rate``: the recent triplets per second.
    """
    counters, source = trainer.counters, trainer.source
    info = {
        "train": trainer.config.to_dict(),
        "data": source.describe(),
        "progress": {
            "step": counters.step,
            "triplets": counters.triplets,
            "epoch": round(source.epoch_float, 4),
            "elapsed_s": round(elapsed, 2),
            "loss": counters.loss_avg,
            "skipped": trainer.skipped.count,
            "finished": finished,
            "triplets_per_s": round(rate, 1),
        },
    }
    return save_checkpoint(trainer.config.output, trainer.model, info, capture_state(trainer, elapsed))


def resumed_config(saved: Mapping[str, Any], config: TrainConfig) -> TrainConfig:
    """The configuration of a resumed run: ``saved`` (a checkpoint's ``"train"`` entry) but for
    :data:`CALLER_FIELDS`, taken from ``config``. Saved keys that are no longer settings are dropped."""
    merged = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
    merged.update({k: getattr(config, k) for k in CALLER_FIELDS})
    return TrainConfig(**merged)


@dataclass
class ResumePoint:
    """A checkpoint to continue: the merged configuration, the model (eval mode, CPU) and the state."""

    config: TrainConfig
    model: torch.nn.Module
    state: dict[str, Any] = field(repr=False)


#: Files a training run writes beside its checkpoint (:mod:`deeprank.training.monitor`, ``deeprank plot``).
RUN_REPORTS = frozenset({"log.jsonl", "tensorboard", "best", "curves.png"})


def check_output(config: TrainConfig) -> None:
    """Refuse a fresh run into a non-empty output folder unless ``resume`` or ``overwrite`` is set.

    Retraining into the folder of an earlier model would replace it without a word (and every index
    built from it would then refer to other weights).
    """
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise DeeprankError(f"the output folder {output} is a file")
    if config.resume or config.overwrite or not output.is_dir():
        return
    # What a run writes before its first checkpoint (its log, TensorBoard files, best model so far) is
    # no earlier model: a run killed then may start again in the same folder.
    if any(p.name not in RUN_REPORTS for p in output.iterdir()):
        raise DeeprankError(
            f"the output folder {output} is not empty; pass --resume to continue the run in it "
            "or --overwrite to replace its checkpoint"
        )


def resume_point(config: TrainConfig) -> ResumePoint | None:
    """The checkpoint in ``config.output`` to continue, or ``None`` for a fresh run.

    ``None`` unless ``config.resume`` and the output directory holds a checkpoint; a checkpoint
    without a training state raises ``ValueError``, as does a corrupt one. A fresh run into a
    non-empty folder without ``overwrite`` raises :class:`~deeprank.errors.DeeprankError`
    (:func:`check_output`); with ``overwrite`` (and no ``resume``) the old training state is deleted.

    The model and the saved settings come from the training state (which holds the weights it
    belongs to); ``model.safetensors`` and ``config.json`` are checked to be whole.
    """
    check_output(config)
    output = Path(config.output)
    if config.overwrite and not config.resume:
        # A new run: the old run's state goes now, so a --resume after this run is cut before its
        # first save cannot continue the old run instead (its weights stay until replaced).
        for name in (STATE_FILE, LEGACY_STATE_FILE):
            (output / name).unlink(missing_ok=True)
        return None
    has_config = (output / CONFIG_FILE).is_file()
    has_state = (output / STATE_FILE).is_file() or (output / LEGACY_STATE_FILE).exists()
    if not (config.resume and (has_config or has_state)):
        return None
    saved: dict[str, Any] = {}
    if has_config:  # absent only after a kill during the first save: the state is enough
        saved = load_config(output)
        load_model(output)  # a truncated or corrupt model.safetensors is reported, not replaced silently
    state = load_train_state(output)
    if state is None:
        raise ValueError(f"{output} has no training state to resume from ({STATE_FILE} missing)")
    model = load_state_model(state, output / STATE_FILE)
    return ResumePoint(resumed_config(state.get("train", saved.get("train", {})), config), model, state)
