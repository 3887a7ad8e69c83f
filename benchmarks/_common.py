"""Shared helpers for the benchmark scripts: timing, machine facts, floors, tables and JSON output.

Import from a script in this folder (``from _common import ...``) or as ``benchmarks._common``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def time_call(
    fn: Callable[[], Any], repeats: int = 3, warmup: int = 0, budget_s: float = 20.0
) -> dict[str, Any]:
    """Times ``fn()`` ``repeats`` times (after ``warmup`` untimed calls) and returns the median.

    Stops early once the timed calls have used ``budget_s`` seconds (at least one call is always
    timed), so very slow baselines do not stall a run; the number of timed calls is reported.
    Returns ``{"median_s", "min_s", "times_s", "repeats"}``.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
        if spent >= budget_s:
            break
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "repeats": len(times),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, core count, memory, load and library versions (what a reader needs to judge the numbers)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with contextlib.suppress(OSError):
        info["load_average"] = list(os.getloadavg())
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            total_kb = int(fh.readline().split()[1])
        info["memory_gib"] = round(total_kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    for name in ("numpy", "torch", "faiss", "deeprank"):
        try:
            module = __import__(name)
            info[f"{name}_version"] = getattr(module, "__version__", "?")
        except ImportError:
            info[f"{name}_version"] = None
    try:
        import deeprank

        info["deeprank_build"] = deeprank.build_info()
    except ImportError:
        pass
    return info


def measure_read_bandwidth(threads: int = 1, gib: float = 1.0, repeats: int = 3) -> float:
    """Memory read bandwidth in bytes/s: summing a ``gib`` GiB float32 array (median of repeats).

    Uses torch's multi-threaded sum with ``threads`` threads when torch is installed (numpy's sum is
    single-threaded, and one core may not saturate memory), else numpy; the faster of the two.
    """
    import numpy as np

    a = np.ones(int(gib * 2**30) // 4, dtype=np.float32)
    best = a.nbytes / time_call(lambda: a.sum(dtype=np.float32), repeats=repeats, warmup=1)["median_s"]
    try:
        import torch
    except ImportError:
        return best
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t = torch.from_numpy(a)
        best = max(best, a.nbytes / time_call(lambda: t.sum(), repeats=repeats, warmup=1)["median_s"])
    finally:
        torch.set_num_threads(before)
    return best


def measure_gemm_rate(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """float32 GEMM rate in FLOP/s (torch.mm on ``size`` x ``size`` matrices with ``threads`` threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.rand(size, size)
        b = torch.rand(size, size)
        t = time_call(lambda: torch.mm(a, b), repeats=repeats, warmup=1)
    finally:
        torch.set_num_threads(before)
    return 2.0 * size**3 / t["median_s"]


def format_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f}us"
    if s < 1:
        return f"{s * 1e3:.1f}ms"
    return f"{s:.2f}s"


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """Prints ``rows`` (dicts) as an aligned text table with the given column keys."""
    if title:
        print(f"\n{title}")
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Writes ``payload`` as JSON atomically (:func:`deeprank.io.write_json_atomic`)."""
    from deeprank.io import write_json_atomic

    return write_json_atomic(path, payload)
