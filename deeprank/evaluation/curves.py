"""Training curves of a run drawn with Pillow (as :mod:`deeprank.evaluation.plots`): ``RUN/curves.png``.

Two panels over the step axis, read from ``RUN/log.jsonl`` (:mod:`deeprank.training.logbook`):

* **loss**: each step's loss (light) and its moving average (dark, weight 0.02 as the progress bar's);
* **validation**: ``precision_at_1`` and ``similarity_precision`` on a 0..1 axis, when the run
  validated (``--val-every``); otherwise the panel says so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .plots import _BACKGROUND, _INK, _save_png

__all__ = ["CURVES_FILE", "plot_run"]

CURVES_FILE = "curves.png"
_SERIES = {"precision_at_1": (33, 113, 181), "similarity_precision": (230, 85, 13)}


def _smooth(values: Sequence[float], weight: float = 0.02) -> list[float]:
    out, avg = [], math.nan
    for v in values:
        avg = v if math.isnan(avg) else (1 - weight) * avg + weight * v
        out.append(avg)
    return out


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (count - 1) for i in range(count)]


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    lines: Sequence[tuple[Sequence[float], Sequence[float], tuple[int, int, int], int]],
    font: ImageFont.ImageFont,
) -> None:
    """Axes in ``box`` (left, top, right, bottom) with ``lines`` of ``(x, y, colour, width)``."""
    left, top, right, bottom = box
    (x0, x1), (y0, y1) = x_range, y_range
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline=_INK)
    draw.text((left, top - 16), title, fill=_INK, font=font)
    for y in _ticks(y0, y1):
        _, py = at(x0, y)
        draw.line([left - 4, py, left, py], fill=_INK)
        draw.text((left - 48, py - 6), f"{y:.3g}", fill=_INK, font=font)
    for x in _ticks(x0, x1):
        px, _ = at(x, y0)
        draw.line([px, bottom, px, bottom + 4], fill=_INK)
        draw.text((px - 10, bottom + 6), f"{x:.0f}" if x1 - x0 >= 8 else f"{x:.3g}", fill=_INK, font=font)
    for xs, ys, colour, width in lines:
        points = [at(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
        if len(points) == 1:
            (px, py) = points[0]
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        elif points:
            draw.line(points, fill=colour, width=width)


def plot_run(run: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Draw the loss and validation curves of the run folder ``run`` to ``path`` (default
    ``RUN/curves.png``); returns the file written. A run without steps in its log raises ``ValueError``."""
    from ..training.logbook import LOG_FILE, read_log

    run = Path(run)
    if not (run / LOG_FILE).is_file():
        raise FileNotFoundError(
            f"no training log in {run} ({LOG_FILE} missing: is it a training run folder?)"
        )
    records = read_log(run)
    train = [r for r in records if r.get("event") == "train" and r.get("loss") is not None]
    val = [r for r in records if r.get("event") == "val"]
    if not train:
        raise ValueError(f"{run / LOG_FILE} holds no training steps to plot")
    steps = [r["step"] for r in train]
    loss = [float(r["loss"]) for r in train]
    width, height, margin = 900, 640, 70
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    x_range = (min(steps[0], val[0]["step"] if val else steps[0]), steps[-1])
    finite = [v for v in loss if math.isfinite(v)] or [0.0]
    draw.text((margin, 8), f"{run.name}: {len(train)} steps", fill=_INK, font=font)
    _panel(
        draw,
        (margin, 50, width - 30, 300),
        "training loss (light: per step, dark: moving average)",
        x_range,
        (0.0, max(finite)),
        [(steps, loss, (170, 190, 220), 1), (steps, _smooth(loss), (20, 50, 120), 2)],
        font,
    )
    box = (margin, 360, width - 30, height - 40)
    lines = []
    for key, colour in _SERIES.items():
        points = [(r["step"], r[key]) for r in val if r.get(key) is not None]
        if points:
            lines.append(([p[0] for p in points], [p[1] for p in points], colour, 2))
    title = "validation: " + ", ".join(k for k in _SERIES if any(r.get(k) is not None for r in val))
    if not lines:
        title = "no validation in this run (train with --val-every N and --val-fraction or --val)"
    _panel(draw, box, title, x_range, (0.0, 1.0), lines, font)
    for i, (key, colour) in enumerate(_SERIES.items()):
        draw.line([width - 220, 370 + 14 * i + 6, width - 200, 370 + 14 * i + 6], fill=colour, width=2)
        draw.text((width - 195, 370 + 14 * i), key, fill=_INK, font=font)
    return _save_png(canvas, run / CURVES_FILE if path is None else path)
