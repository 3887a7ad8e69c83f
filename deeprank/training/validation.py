"""Periodic validation during training: a held-out split measured every ``val_every`` steps.

The validation images are ``val_fraction`` of the labelled training data, held out of training by
:func:`deeprank.training.sources.build_source`, or the labelled data ``val`` (a folder, ``hf:PATH``,
WebDataset shards), opened by the same :func:`~deeprank.training.sources.labelled_data`. They are
decoded once (unreadable ones skipped and counted with the run's) and kept in memory: ``N`` images of
``C x S x S`` bytes each.

Each validation embeds them with the model as it is (eval mode, no gradients, no random numbers drawn,
so the training that follows is unchanged) and measures, with the evaluation code:

* ``precision_at_1``: the share of images whose nearest other image has its label
  (pytorch-metric-learning's name, :func:`deeprank.evaluation.metrics.retrieval_metrics`);
* ``similarity_precision``: the share of :data:`VAL_TRIPLETS` fixed label triplets (positive of the
  query's label, negative of another) ranked correctly (where the labels make such triplets).

The best ``precision_at_1`` so far (across resumes, read back from the log) keeps its checkpoint in
``RUN/best/`` (weights and config, no training state), written by the checkpoint save.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import SkippedImages, UnreadableImage
from ..models.checkpoint import save_checkpoint
from .sources import Labelled, labelled_data, spec_kind

__all__ = ["BEST_DIR", "SCORE", "VAL_TRIPLETS", "ValidationSet", "Validator"]

BEST_DIR = "best"
SCORE = "precision_at_1"
VAL_TRIPLETS = 2000


@dataclass
class ValidationSet:
    """Decoded validation images ``uint8 [N, C, S, S]``, their labels and fixed triplets (or None)."""

    images: torch.Tensor
    labels: np.ndarray
    triplets: np.ndarray | None

    @classmethod
    def from_labelled(cls, data: Labelled, skipped: SkippedImages, seed: int) -> ValidationSet:
        from ..evaluation.triplets import sample_labelled_triplets

        if isinstance(data.images, torch.Tensor):
            images, labels = data.images, data.labels
        else:
            rows, kept = [], []
            for i in range(len(data.labels)):
                try:
                    rows.append(data.images.get(i))
                    kept.append(i)
                except UnreadableImage as err:
                    skipped.add(err)
            if len(rows) < 2:
                raise ValueError("validation needs at least 2 readable images")
            images, labels = torch.stack(rows), data.labels[kept]
        counts = np.bincount(labels)
        triplets = None
        if (counts >= 2).any() and (counts > 0).sum() >= 2:
            triplets = sample_labelled_triplets(labels, VAL_TRIPLETS, seed=seed)
        return cls(images, labels, triplets)


class Validator:
    """Validates a trainer's model every ``config.val_every`` steps; keeps the best in ``RUN/best``.

    Args:
        trainer: the run's :class:`~deeprank.training.loop.Trainer` (its source's ``held_out`` or
            ``config.val`` gives the data).
        best: the best :data:`SCORE` of earlier sessions (from the log), if any.
    """

    def __init__(self, trainer: Any, best: float | None = None) -> None:
        config = trainer.config
        self.every = int(config.val_every)
        self.output = Path(config.output)
        self.best = best
        if config.val:
            kind = spec_kind(config.val)
            model = getattr(trainer.model, "module", trainer.model)  # a DDP wrapper's module
            data = labelled_data(
                config.val, kind, config, int(model.image_size), int(model.in_channels), trainer.skipped
            )
        else:
            data = trainer.source.held_out
            if data is None:
                raise ValueError("val_every needs validation data: val (DATA) or val_fraction")
        self.data = ValidationSet.from_labelled(data, trainer.skipped, config.seed + 11)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """The validation metrics of ``model`` (module docstring)."""
        from ..embedding.embed import embed_tensor
        from ..evaluation.metrics import retrieval_metrics, share_correct, triplets_correct

        emb = embed_tensor(getattr(model, "module", model), self.data.images)
        labels = self.data.labels
        found = retrieval_metrics(emb, labels, emb, labels, ks=(1,), exclude_self=True, map_at_r=False)
        out = {SCORE: float(found[SCORE]), "images": int(len(labels))}
        if self.data.triplets is not None:
            out["similarity_precision"] = share_correct(triplets_correct(emb, self.data.triplets))
        return out

    def run(self, trainer: Any) -> dict[str, Any]:
        """Measure the trainer's model now; a new best is saved to ``RUN/best``. Returns the record."""
        model = getattr(trainer.model, "module", trainer.model)
        values: dict[str, Any] = self.measure(model)
        improved = self.best is None or values[SCORE] > self.best
        if improved:
            self.best = values[SCORE]
            info = {
                "train": trainer.config.to_dict(),
                "data": trainer.source.describe(),
                "validation": {"step": trainer.counters.step, **values},
            }
            save_checkpoint(self.output / BEST_DIR, model, info)
        values["best"] = improved
        return values
