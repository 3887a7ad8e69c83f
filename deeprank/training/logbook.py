"""The run's log: one JSON line per training step and per validation in ``RUN/log.jsonl``.

Each line is a JSON object with ``"event"`` (``"train"`` or ``"val"``) and ``"step"``:

* ``train``: ``loss``, ``lr``, ``triplets`` (so far), ``triplets_per_s``, ``active_fraction`` (the
  share of the step's triplets that violate the margin, so have a non-zero hinge) and ``elapsed_s``;
* ``val``: the validation metrics (:mod:`deeprank.training.validation`) and ``best`` (whether this
  validation's score is the best so far, the one kept in ``RUN/best/``).

Every line is written with one ``write`` on a file opened for appending (a reader never sees half a
line but after a power cut, and :func:`read_log` drops such a line), and the file is ``fsync``-ed
with each checkpoint. On resume the lines after the checkpoint's step (written by a session that
stopped before its next checkpoint) are dropped, atomically, before appending, so no step appears
twice. With ``tensorboard=True`` the same numbers also go to TensorBoard event files in
``RUN/tensorboard/`` (the ``tensorboard`` package: extra ``deeprank[tensorboard]``).
"""

from __future__ import annotations

import json
import math
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import DeeprankError
from ..io import write_text_atomic

__all__ = ["LOG_FILE", "Logbook", "active_fraction", "read_log"]

LOG_FILE = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"


def active_fraction(embeddings: torch.Tensor, margin: float) -> float:
    """The share of the stacked ``[q; p; n]`` triplets with ``margin + D(q,p) - D(q,n) > 0``.

    ``D`` is the squared Euclidean distance of the paper's hinge; computed without gradients.
    """
    with torch.no_grad():
        e = embeddings.detach().float()
        b = e.shape[0] // 3
        if b == 0:
            return math.nan
        q, p, n = e[:b], e[b : 2 * b], e[2 * b : 3 * b]
        hinge = margin + (q - p).pow(2).sum(1) - (q - n).pow(2).sum(1)
        return float((hinge > 0).float().mean())


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (a run folder or the file); a torn or foreign line is dropped."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


def _json_number(value: Any) -> Any:
    """Floats rounded for the log; NaN/inf as ``None`` (JSON has no such numbers)."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise DeeprankError(
            f"--tensorboard needs the tensorboard package: pip install 'deeprank[tensorboard]' ({exc})"
        ) from None
    return SummaryWriter(log_dir=str(folder))


class Logbook:
    """Appends the records of one run to ``RUN/log.jsonl`` (module docstring).

    Args:
        run: the run (checkpoint) folder; created if missing.
        start_step: the step the run continues from: ``0`` for a fresh run (an old log is replaced),
            the checkpoint's step on resume (later lines are dropped).
        tensorboard: also write TensorBoard event files to ``RUN/tensorboard/``.
    """

    def __init__(self, run: str | os.PathLike, start_step: int = 0, *, tensorboard: bool = False) -> None:
        self.run = Path(run)
        self.path = self.run / LOG_FILE
        self.run.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_log(self.path) if r["step"] <= start_step] if self.path.exists() else []
        if start_step == 0:
            kept = []
        # Rewritten atomically: a crash here leaves the old log whole, never a cut one.
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.records_before = kept
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        # A run ended by an exception never calls close(): the descriptor goes with the object.
        self._finalizer = weakref.finalize(self, os.close, self._fd)
        self._tb = _tensorboard_writer(self.run / TENSORBOARD_DIR) if tensorboard else None

    def best(self, key: str) -> float | None:
        """The best (largest) value of ``key`` among the validations kept from earlier sessions."""
        values = [r[key] for r in self.records_before if r.get("event") == "val" and r.get(key) is not None]
        return max(values) if values else None

    def write(self, event: str, step: int, values: Mapping[str, Any]) -> None:
        """Append one record (one ``write``: never half a line for a reader)."""
        if self._fd is None:
            raise ValueError(f"the log {self.path} is closed")
        record = {"event": event, "step": int(step), **{k: _json_number(v) for k, v in values.items()}}
        os.write(self._fd, (json.dumps(record) + "\n").encode("utf-8"))
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(f"{event}/{key}", value, int(step))

    def sync(self) -> None:
        """Flush the log to disk (with each checkpoint)."""
        if self._fd is not None:
            os.fsync(self._fd)
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._fd is None:
            return
        self.sync()
        self._finalizer()  # closes the descriptor, once
        self._fd = None
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> Logbook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
