"""PNG figures drawn with Pillow (no matplotlib): the triplet rank heat-map and query result grids."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io import atomic_path

# A perceptual dark-blue -> green -> yellow ramp (viridis-like anchor colours).
_RAMP = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)
_BACKGROUND = (255, 255, 255)
_INK = (30, 30, 30)


def _colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 through the ramp."""
    v = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    frac = (v - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).round().astype(np.uint8)


def _save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def rank_heatmap(
    rank_positive: Any,
    rank_negative: Any,
    path: str | os.PathLike,
    *,
    max_rank: int | None = None,
    bins: int = 50,
    title: str = "rank of positive vs rank of negative",
    cell: int = 8,
) -> Path:
    """The applied report's heat-map: one count per triplet at (rank of p, rank of n).

    x is the positive's rank, y the negative's (origin bottom-left, rank 1 = nearest); colour is
    ``log(1 + count)``. Triplets above the diagonal (negative ranked after the positive) are correct,
    so a good embedding is dense above the line. The share above is written in the title.
    """
    rp = np.asarray(rank_positive, dtype=np.float64).ravel()
    rn = np.asarray(rank_negative, dtype=np.float64).ravel()
    if rp.shape != rn.shape or rp.size == 0:
        raise ValueError(f"rank arrays must be non-empty and of equal length, got {rp.shape} and {rn.shape}")
    top = float(max_rank if max_rank is not None else max(rp.max(), rn.max()))
    edges = np.linspace(1.0, top + 1.0, bins + 1)
    counts, _, _ = np.histogram2d(rp, rn, bins=[edges, edges])  # [x bins, y bins]
    shade = np.log1p(counts.T[::-1])  # rows top->bottom = high->low negative rank
    shade = shade / shade.max() if shade.max() > 0 else shade
    pixels = _colormap(shade)
    pixels[counts.T[::-1] == 0] = (245, 245, 245)
    plot = Image.fromarray(pixels, "RGB").resize((bins * cell, bins * cell), Image.NEAREST)

    left, bottom, top_margin, right = 70, 60, 40, 20
    side = bins * cell
    canvas = Image.new("RGB", (left + side + right, top_margin + side + bottom), _BACKGROUND)
    canvas.paste(plot, (left, top_margin))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.line([(left, top_margin + side), (left + side, top_margin)], fill=(220, 30, 30), width=2)  # x = y
    draw.rectangle([left - 1, top_margin - 1, left + side, top_margin + side], outline=_INK)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        value = f"{1 + frac * top:.0f}"
        x = left + frac * side
        y = top_margin + side - frac * side
        draw.line([(x, top_margin + side), (x, top_margin + side + 4)], fill=_INK)
        draw.text((x - 3 * len(value), top_margin + side + 6), value, fill=_INK, font=font)
        draw.line([(left - 4, y), (left, y)], fill=_INK)
        draw.text((left - 8 - 6 * len(value), y - 5), value, fill=_INK, font=font)
    above = float((rn > rp).mean())
    draw.text((left, 10), f"{title} (n={rp.size}, above diagonal {100 * above:.1f}%)", fill=_INK, font=font)
    draw.text((left + side // 2 - 50, top_margin + side + 28), "rank of positive", fill=_INK, font=font)
    draw.text((6, top_margin - 16), "rank of negative", fill=_INK, font=font)
    return _save_png(canvas, path)


def to_pil(image: Any) -> Image.Image:
    """A PIL image from a path, PIL image, ``[C, H, W]`` / ``[H, W]`` / ``[H, W, C]`` array or tensor."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.dtype.kind == "f":
        a = (np.clip(a, 0.0, 1.0) * 255).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3):
        raise ValueError(f"cannot draw an image array of shape {a.shape}")
    return Image.fromarray(a.astype(np.uint8)).convert("RGB")


def result_grid(
    queries: Sequence[Any],
    results: Sequence[Sequence[Any]],
    distances: Any,
    path: str | os.PathLike,
    *,
    correct: Any = None,
    captions: Sequence[Sequence[str]] | None = None,
    cell: int = 84,
    query_label: str = "query",
) -> Path:
    """One row per query: the query image, then its top K results with their distances.

    ``queries[i]`` and ``results[i][j]`` are anything :func:`to_pil` draws; ``distances`` is ``[M, K]``;
    ``correct`` (optional bool ``[M, K]``) frames each result green or red; ``captions`` adds a line of
    text under each result (e.g. its id or label); ``query_label`` is written under each query.
    """
    dist = np.asarray(distances, dtype=np.float64)
    m = len(queries)
    if m == 0 or len(results) != m or dist.shape[0] != m:
        raise ValueError(f"need as many result rows and distance rows as queries ({m})")
    k = max(len(r) for r in results)
    pad, text_h = 6, 28 if captions is not None else 16
    width = pad + (k + 1) * (cell + pad) + pad
    height = pad + m * (cell + text_h + pad)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    ok = None if correct is None else np.asarray(correct, dtype=bool)
    for i in range(m):
        y = pad + i * (cell + text_h + pad)
        canvas.paste(to_pil(queries[i]).resize((cell, cell), Image.NEAREST), (pad, y))
        draw.rectangle([pad - 2, y - 2, pad + cell + 1, y + cell + 1], outline=(40, 90, 200), width=2)
        draw.text((pad, y + cell + 2), query_label, fill=_INK, font=font)
        for j, item in enumerate(results[i]):
            x = pad + (j + 1) * (cell + pad) + pad
            canvas.paste(to_pil(item).resize((cell, cell), Image.NEAREST), (x, y))
            if ok is not None:
                colour = (40, 160, 60) if ok[i, j] else (210, 40, 40)
                draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=colour, width=2)
            draw.text((x, y + cell + 2), f"{j + 1}: {dist[i, j]:.3f}", fill=_INK, font=font)
            if captions is not None:
                draw.text((x, y + cell + 14), str(captions[i][j])[: cell // 6], fill=_INK, font=font)
    return _save_png(canvas, path)
