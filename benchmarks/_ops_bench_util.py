"""Small timing helpers shared by bench_triplet.py and bench_lrn.py (self-contained on purpose)."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import cpu_model, write_json  # noqa: F401  (re-exported for the op benchmarks)

import deeprank


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall-clock seconds of each callable, ``repeats`` times, taking turns (A B C A B C ...).

    Taking turns spreads slow phases of a shared, noisy machine over every method alike, so the
    ratios of medians stay meaningful even when the absolute times drift.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def summarize(samples: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "samples_s": samples}


def memory_bandwidth(gib: float = 1.0, repeats: int = 5) -> dict[str, float]:
    """Measured copy bandwidth in bytes/s (bytes read + bytes written per second).

    ``numpy_copy``: one thread copying ``gib``/2 GiB into another buffer of that size.
    ``torch_copy``: the same copy with torch's intra-op threads. ``best`` is the larger.
    """
    n = int(gib * (1 << 30) / 2 / 4)
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    dst.fill(0.0)  # touch every page first: measure copying, not page faults
    moved = 2 * src.nbytes
    t_np = time_interleaved({"np": lambda: np.copyto(dst, src)}, repeats)["np"]
    s, d = torch.from_numpy(src), torch.from_numpy(dst)
    t_torch = time_interleaved({"torch": lambda: d.copy_(s)}, repeats)["torch"]
    numpy_bw = moved / statistics.median(t_np)
    torch_bw = moved / statistics.median(t_torch)
    return {"numpy_copy": numpy_bw, "torch_copy": torch_bw, "best": max(numpy_bw, torch_bw), "bytes": moved}


def machine_info() -> dict[str, Any]:
    cpu = cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    info = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus_usable": usable,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "deeprank": deeprank.build_info(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15"] = list(os.getloadavg())
    return info


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def parse_args(name: str, description: str, argv: list[str] | None) -> tuple[argparse.Namespace, Path]:
    """The options every op benchmark takes, and the JSON path (``results/<name>[_quick].json``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small cases (a smoke test, not a measurement)")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON path (default results/{name}.json)")
    args = parser.parse_args(argv)
    stem = f"{name}_quick" if args.quick else name
    default = Path(__file__).resolve().parent / "results" / f"{stem}.json"
    return args, args.out or default


def announce(quick: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """Machine facts and measured copy bandwidth, printed once at the start of a run."""
    machine = machine_info()
    bw = memory_bandwidth(0.25 if quick else 1.0)
    print(
        f"{machine['cpu']}, {machine['cpus_usable']} CPUs, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), deeprank {machine['deeprank']['simd']} "
        f"({machine['deeprank']['threads']} threads)"
    )
    print(f"copy bandwidth: numpy {bw['numpy_copy'] / 1e9:.1f} GB/s, torch {bw['torch_copy'] / 1e9:.1f} GB/s")
    return machine, bw


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The per-case table shared by the op benchmarks."""
    print_table(
        ["case", "pass", "method", "median ms", "min ms", "x deeprank time", "floor ms", "of floor"],
        [
            [
                r["case"],
                r["pass"],
                r["method"],
                f"{r['median_s'] * 1e3:.1f}",
                f"{r['min_s'] * 1e3:.1f}",
                f"{r['time_vs_deeprank']:.2f}",
                f"{r['floor_s'] * 1e3:.1f}",
                f"{r['fraction_of_floor']:.0%}",
            ]
            for r in rows
        ],
    )
