"""Exact top-K search: deeprank against faiss IndexFlatL2, torch (mm + topk) and numpy (argpartition).

Usage:
    PYTHONPATH=. python benchmarks/bench_topk.py              # full grid (long on 2 cores)
    PYTHONPATH=. python benchmarks/bench_topk.py --quick      # small grid, a minute or two
    PYTHONPATH=. python benchmarks/bench_topk.py --cases 1M-128 --ms 1,64 --ks 10 --repeats 5

Every method answers the same queries on the same data in one process, with the same thread count;
times are medians of ``--repeats`` calls (very slow calls stop after a time budget). deeprank is timed
as ``FlatIndex.search`` (norms cached, like faiss's index) and as plain ``deeprank.topk`` (norms computed
in the call). torch and numpy form ``||q||^2 + ||x||^2 - 2 q.x`` with precomputed database norms and
process queries in chunks so the distance matrix stays below ``--chunk-bytes`` (1 GiB): a 1024 x 1M
float32 matrix would be 4 GiB. The run starts by measuring memory read bandwidth and the GEMM rate,
and reports each case's floor: max(database bytes / bandwidth, 2 M N D / GEMM rate).
"""

from __future__ import annotations

import argparse
import functools
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    format_seconds,
    machine_info,
    measure_gemm_rate,
    measure_read_bandwidth,
    print_table,
    time_call,
    write_json,
)

import deeprank  # noqa: E402

CASES = {"1M-128": (1_000_000, 128), "200K-1024": (200_000, 1024)}
QUICK_CASES = {"100K-128": (100_000, 128), "20K-1024": (20_000, 1024)}
METHODS = ("deeprank", "deeprank_topk", "faiss", "torch", "numpy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small databases (100K x 128, 20K x 1024)")
    p.add_argument("--cases", default=None, help="comma list of N-D cases, e.g. 1M-128,200K-1024 or 50000-64")
    p.add_argument("--ms", default="1,16,64,1024", help="query counts M (comma list)")
    p.add_argument("--ks", default="10,100,1000", help="neighbour counts K (comma list)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    p.add_argument("--budget", type=float, default=15.0, help="stop repeating after this many seconds")
    p.add_argument("--threads", type=int, default=None, help="threads for every library (default: all)")
    p.add_argument("--chunk-bytes", type=float, default=2**30, help="max distance bytes for torch/numpy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/topk[_quick].json)")
    p.add_argument("--markdown", metavar="JSON", default=None, help="print a results file as a table; no run")
    return p.parse_args(argv)


def parse_case(text: str) -> tuple[int, int]:
    if text in CASES:
        return CASES[text]
    if text in QUICK_CASES:
        return QUICK_CASES[text]
    n_text, d_text = text.split("-")
    scale = {"K": 1_000, "M": 1_000_000}.get(n_text[-1].upper(), 1)
    n = int(float(n_text[:-1]) * scale) if scale > 1 else int(n_text)
    return n, int(d_text)


class Methods:
    """The competing implementations, set up once per database."""

    def __init__(self, x: np.ndarray, threads: int, chunk_bytes: float, wanted: set[str]) -> None:
        self.x = x
        self.threads = threads
        self.chunk_bytes = chunk_bytes
        self.index = deeprank.FlatIndex(x, copy=False)
        self.xn = np.array(self.index.norms)
        self.faiss = None
        if "faiss" in wanted:
            try:
                import faiss

                faiss.omp_set_num_threads(threads)
                self.faiss = faiss.IndexFlatL2(x.shape[1])
                self.faiss.add(x)
            except ImportError:
                print("faiss not installed (pip install 'deeprank[bench]'): skipping it")
        self.torch = None
        if "torch" in wanted:
            import torch

            torch.set_num_threads(threads)
            self.torch = torch
            self.tx = torch.from_numpy(x)
            self.txn = torch.from_numpy(self.xn)

    def _chunk(self, m: int) -> int:
        return max(1, min(m, int(self.chunk_bytes // (4 * self.x.shape[0]))))

    def run(self, name: str, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        if name == "deeprank":
            return self.index.search(q, k, threads=self.threads)
        if name == "deeprank_topk":
            return deeprank.topk(q, self.x, k, threads=self.threads)
        if name == "faiss":
            if self.faiss is None:
                return None
            return self.faiss.search(q, k)
        if name == "torch":
            if self.torch is None:
                return None
            torch = self.torch
            tq = torch.from_numpy(q)
            outs_d, outs_i = [], []
            step = self._chunk(len(q))
            for s in range(0, len(q), step):
                qc = tq[s : s + step]
                dist = torch.addmm(self.txn[None, :], qc, self.tx.T, alpha=-2.0)
                dist += (qc * qc).sum(1, keepdim=True)
                vals, idx = torch.topk(dist, k, dim=1, largest=False, sorted=True)
                outs_d.append(vals)
                outs_i.append(idx)
            return torch.cat(outs_d).numpy(), torch.cat(outs_i).numpy()
        if name == "numpy":
            outs_d, outs_i = [], []
            step = self._chunk(len(q))
            for s in range(0, len(q), step):
                qc = q[s : s + step]
                dist = qc @ self.x.T
                dist *= -2.0
                dist += self.xn[None, :]
                dist += (qc * qc).sum(1, keepdims=True)
                part = np.argpartition(dist, k - 1, axis=1)[:, :k]
                pd = np.take_along_axis(dist, part, axis=1)
                order = np.argsort(pd, axis=1, kind="stable")
                outs_d.append(np.take_along_axis(pd, order, axis=1))
                outs_i.append(np.take_along_axis(part, order, axis=1))
            return np.concatenate(outs_d), np.concatenate(outs_i)
        raise ValueError(f"unknown method {name!r}")


def agreement(ref: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> float:
    """Share of (query, rank) positions where another method returns the same index as deeprank."""
    return float(np.mean(np.asarray(ref[1]) == np.asarray(other[1])))


def bench_case(
    rng: np.random.Generator,
    n: int,
    d: int,
    ms: list[int],
    ks: list[int],
    wanted: list[str],
    threads: int,
    args: argparse.Namespace,
    bandwidth: float,
    gemm: float,
    memory: dict[str, Any],
) -> list[dict[str, Any]]:
    """Times every method on one random database; fills ``memory`` on the first deeprank call."""
    print(f"\n== database N={n:,} x D={d} ({n * d * 4 / 2**20:.0f} MiB), threads={threads}", flush=True)
    x = rng.random((n, d), dtype=np.float32)
    methods = Methods(x, threads, args.chunk_bytes, set(wanted))
    rows = []
    for m in ms:
        q = rng.random((m, d), dtype=np.float32)
        for k in ks:
            if k > n:
                continue
            row: dict[str, Any] = {"N": n, "D": d, "M": m, "K": k}
            ref = None
            for name in wanted:
                rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                start = time.perf_counter()
                out = methods.run(name, q, k)  # warm-up, and the answer to compare
                first = time.perf_counter() - start
                if out is None:
                    continue
                if name == "deeprank" and not memory:
                    # ru_maxrss is a high-water mark: only meaningful before any heavier method ran.
                    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    memory.update(case=[n, d, m, k], peak_rss_increase_mib=(rss_after - rss_before) / 1024)
                if first > args.budget / 2:
                    # A call this long has nothing left to warm up: it is the measurement.
                    t = {"median_s": first, "min_s": first, "times_s": [first], "repeats": 1}
                else:
                    call = functools.partial(methods.run, name, q, k)
                    t = time_call(call, args.repeats, budget_s=args.budget)
                row[name] = t
                if name == "deeprank":
                    ref = out
                elif ref is not None:
                    row[f"{name}_agreement"] = agreement(ref, out)
            row["floor_memory_s"] = n * d * 4 / bandwidth
            row["floor_compute_s"] = 2.0 * m * n * d / gemm
            row["floor_s"] = max(row["floor_memory_s"], row["floor_compute_s"])
            row["workspace_bytes"] = deeprank._C.topk_workspace_bytes(
                m, n, d, k, threads=threads, norms_given=True
            )
            base = row.get("deeprank", {}).get("median_s")
            for name in wanted:
                if name != "deeprank" and name in row and base:
                    row[f"{name}_ratio"] = row[name]["median_s"] / base
            rows.append(row)
            times = "  ".join(f"{nm} {format_seconds(row[nm]['median_s'])}" for nm in wanted if nm in row)
            print(f"M={m:5d} K={k:5d}  {times}  floor {format_seconds(row['floor_s'])}", flush=True)
    return rows


def print_summary(rows: list[dict[str, Any]], n: int, d: int, wanted: list[str]) -> None:
    table = []
    for row in rows:
        line = {"M": row["M"], "K": row["K"], "floor": format_seconds(row["floor_s"])}
        for name in wanted:
            if name in row:
                line[name] = format_seconds(row[name]["median_s"])
            if f"{name}_ratio" in row:
                line[f"{name}/dr"] = f"{row[f'{name}_ratio']:.2f}x"
        if "deeprank" in row:
            line["dr/floor"] = f"{row['deeprank']['median_s'] / row['floor_s']:.1f}x"
        table.append(line)
    columns = ["M", "K", "floor"]
    for name in wanted:
        columns.append(name)
        if name != "deeprank":
            columns.append(f"{name}/dr")
    columns.append("dr/floor")
    print_table(table, columns, title=f"N={n:,} D={d}: median times; X/dr = X's time / deeprank's time")


def markdown_table(path: str) -> str:
    """A Markdown table of a results file: times, ratios (X's time / deeprank's) and floors."""
    import json

    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    lines = [
        "| N x D | M | K | floor | deeprank | faiss | torch | numpy | faiss/dr | torch/dr | numpy/dr |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        t = {nm: r[nm]["median_s"] for nm in ("deeprank", "faiss", "torch", "numpy") if nm in r}
        others = ("faiss", "torch", "numpy")
        ratio = {nm: f"{r[nm + '_ratio']:.2f}x" if nm + "_ratio" in r else "-" for nm in others}
        lines.append(
            f"| {r['N']:,} x {r['D']} | {r['M']} | {r['K']} | {format_seconds(r['floor_s'])} | "
            + " | ".join(format_seconds(t.get(nm)) for nm in ("deeprank", "faiss", "torch", "numpy"))
            + f" | {ratio['faiss']} | {ratio['torch']} | {ratio['numpy']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown_table(args.markdown))
        return 0
    threads = args.threads or deeprank.get_num_threads()
    deeprank.set_num_threads(threads)
    wanted = [m for m in args.methods.split(",") if m]
    for m in wanted:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown method {m!r}; choose from {', '.join(METHODS)}")
    cases = [parse_case(c) for c in args.cases.split(",")] if args.cases else None
    if cases is None:
        cases = list((QUICK_CASES if args.quick else CASES).values())
    ms = [int(v) for v in args.ms.split(",")]
    ks = [int(v) for v in args.ks.split(",")]

    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cpus_usable']} CPUs, load {info.get('load_average')}")
    bandwidth = measure_read_bandwidth(threads)
    gemm = measure_gemm_rate(threads)
    print(f"memory read bandwidth {bandwidth / 1e9:.1f} GB/s (array sum), sgemm {gemm / 1e9:.0f} GFLOP/s")

    rng = np.random.default_rng(args.seed)
    results: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    for n, d in cases:
        rows = bench_case(rng, n, d, ms, ks, wanted, threads, args, bandwidth, gemm, memory)
        results.extend(rows)
        print_summary(rows, n, d, wanted)

    payload = {
        "benchmark": "topk",
        "machine": info,
        "threads": threads,
        "memory_read_bandwidth_bytes_per_s": bandwidth,
        "sgemm_flops_per_s": gemm,
        "chunk_bytes_torch_numpy": args.chunk_bytes,
        "repeats": args.repeats,
        "deeprank_memory": memory,
        "results": results,
    }
    out = Path(args.out) if args.out else RESULTS_DIR / ("topk_quick.json" if args.quick else "topk.json")
    write_json(out, payload)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
