"""Reporting evaluation results: a markdown table and ``results.json`` of method rows."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import write_json_atomic, write_text_atomic

__all__ = ["results_markdown", "write_results"]


_RATIO_PREFIXES = (
    "similarity_precision",
    "recall@",
    "precision@",
    "map@",
    "crop_recall@",
    "precision_at_1",
    "r_precision",
    "mean_average_precision",
    "mean_reciprocal_rank",
)


def _format_cell(key: str, value: Any) -> str:
    if isinstance(value, float) and key.startswith("score@"):
        return f"{value:.0f}"
    if isinstance(value, float) and key.startswith(_RATIO_PREFIXES):
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def results_markdown(rows: Sequence[dict[str, Any]], title: str | None = None) -> str:
    """A markdown table of method rows (``{"method": name, metric: value, ...}``)."""
    if not rows:
        raise ValueError("no result rows to format")
    keys = [key for key in rows[0] if key != "method"]
    lines = [f"## {title}", ""] if title else []
    lines.append("| method | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for r in rows:
        lines.append(
            f"| {r['method']} | " + " | ".join(_format_cell(key, r.get(key, "")) for key in keys) + " |"
        )
    return "\n".join(lines) + "\n"


def write_results(
    rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, info: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``results.json`` (rows plus ``info``) and ``results.md`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    payload = {"info": info or {}, "results": list(rows)}
    json_path, md_path = out / "results.json", out / "results.md"
    write_json_atomic(json_path, payload, default=str)
    header = ""
    if info:
        header = "".join(f"- {key}: {value}\n" for key, value in info.items()) + "\n"
    write_text_atomic(md_path, "# deeprank evaluation\n\n" + header + results_markdown(rows))
    return json_path, md_path
