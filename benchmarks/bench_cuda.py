"""deeprank's CUDA kernels against torch on the same GPU, in one run.

    PYTHONPATH=. python benchmarks/bench_cuda.py [--quick] [--out benchmarks/results]

Measures, with CUDA events (median of several runs after warm-up):
  * the device's HBM bandwidth (device-to-device copy) and FP32 peak (a large torch.mm, TF32 off);
  * top-K: deeprank vs torch (addmm distance matrix + torch.topk) at the issue's cases;
  * triplet loss forward+backward: deeprank vs the composed torch loss, eager and torch.compile;
  * LRN forward+backward: deeprank vs torch.nn.LocalResponseNorm.
For each case it reports the floor (max(bytes / bandwidth, FLOPs / FP32 peak)), the fraction of the
floor reached, the achieved bandwidth, and the speed-up over torch, and writes everything with the
device name to benchmarks/results/cuda_<device>.json. Results are checked against torch before
timing. Without a usable GPU it writes nothing and exits with status 2.
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import deeprank  # noqa: E402
from deeprank._build import cuda_device_count, cuda_module  # noqa: E402
from deeprank.io import write_json_atomic  # noqa: E402
from deeprank.ops import cuda as _cuda_ops  # noqa: E402

# Targets from the CUDA issue; compared only with numbers measured in this run.
TARGETS = {
    "topk_speedup_m1024": 2.0,  # >= 2x torch at M=1024, N=1M, D=128, K=100
    "topk_hbm_fraction_m1": 0.60,  # >= 60% of HBM bandwidth at M=1
    "triplet_hbm_fraction": 0.75,  # forward+backward at B=32768, D=8192
    "lrn_hbm_fraction": 0.60,  # forward+backward at 128x96x55x55
}


def time_cuda(fn: Callable[[], Any], warmup: int = 3, iters: int = 10) -> dict[str, float]:
    """Median and min milliseconds of fn() on the current stream, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": iters}


def measure_bandwidth(quick: bool) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    n = (256 if quick else 2048) * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device="cuda").fill_(1.0)
    dst = torch.empty_like(src)
    t = time_cuda(lambda: dst.copy_(src), warmup=3, iters=20)
    return 2 * n * 4 / (t["min_ms"] * 1e-3)


def measure_fp32_peak(quick: bool) -> float:
    """FP32 FLOP/s of a large torch.mm with TF32 disabled."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        n = 2048 if quick else 8192
        a = torch.randn(n, n, device="cuda")
        b = torch.randn(n, n, device="cuda")
        t = time_cuda(lambda: torch.mm(a, b), warmup=3, iters=10)
        return 2 * n**3 / (t["min_ms"] * 1e-3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def floors(bytes_moved: float, flops: float, bw: float, peak: float) -> dict[str, float]:
    mem_ms = bytes_moved / bw * 1e3
    flop_ms = flops / peak * 1e3
    return {
        "bytes": bytes_moved,
        "flops": flops,
        "memory_floor_ms": mem_ms,
        "compute_floor_ms": flop_ms,
        "floor_ms": max(mem_ms, flop_ms),
    }


def summarize(ours: dict[str, float], floor: dict[str, float], bw: float, baselines: dict[str, dict]) -> dict:
    out = {"ours": ours, **floor}
    out["fraction_of_floor"] = floor["floor_ms"] / ours["median_ms"]
    out["achieved_bandwidth_GBps"] = floor["bytes"] / (ours["median_ms"] * 1e-3) / 1e9
    out["fraction_of_hbm_bandwidth"] = floor["bytes"] / (ours["median_ms"] * 1e-3) / bw
    out["baselines"] = {}
    for name, t in baselines.items():
        entry = dict(t)
        if "median_ms" in t:
            entry["speedup_vs_this"] = t["median_ms"] / ours["median_ms"]
        out["baselines"][name] = entry
    return out


# ----------------------------------------------------------------------------------------------
# top-K
# ----------------------------------------------------------------------------------------------


def torch_topk(q: torch.Tensor, x: torch.Tensor, xn: torch.Tensor, k: int):
    """What users write by hand: the distance matrix through one GEMM, then torch.topk."""
    qn = (q * q).sum(1, keepdim=True)
    d = torch.addmm(xn[None, :], q, x.T, alpha=-2.0).add_(qn)
    return torch.topk(d, k, dim=1, largest=False, sorted=True)


def bench_topk(m: int, n: int, d: int, k: int, bw: float, peak: float) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(m, d, device="cuda", generator=gen)
    x = torch.randn(n, d, device="cuda", generator=gen)
    xn = (x * x).sum(1)
    # Correctness before timing: the same neighbours as the float64 answer on a few queries.
    dist, idx = _cuda_ops.topk(q, x, k)
    rows = min(m, 4)
    ref = torch.cdist(q[:rows].double(), x.double()).pow(2)
    ref_d, _ = torch.topk(ref, k, dim=1, largest=False, sorted=True)
    torch.testing.assert_close(dist[:rows].double(), ref_d, rtol=1e-5, atol=1e-5)
    del ref
    ours = time_cuda(lambda: _cuda_ops.topk(q, x, k))
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # exact FP32, like ours
    try:
        base = time_cuda(lambda: torch_topk(q, x, xn, k))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    bytes_moved = 4.0 * (m * d + n * d) + 12.0 * m * k
    floor = floors(bytes_moved, 2.0 * m * n * d, bw, peak)
    plan = cuda_module().topk_plan(m, n, d, k, torch.cuda.current_device())
    out = summarize(ours, floor, bw, {"torch_addmm_topk_fp32": base})
    out.update({"m": m, "n": n, "d": d, "k": k, "plan": dict(plan)})
    return out


# ----------------------------------------------------------------------------------------------
# Triplet loss
# ----------------------------------------------------------------------------------------------


def composed_triplet(q, p, n, margin: float = 1.0):
    return torch.clamp(margin + ((q - p) ** 2).sum(1) - ((q - n) ** 2).sum(1), min=0)


def bench_triplet(b: int, d: int, bw: float) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, p, n = (torch.randn(b, d, device="cuda", generator=gen) / d**0.5 for _ in range(3))
    grad = torch.ones(b, device="cuda")
    losses = _cuda_ops.triplet_forward(q, p, n, 1.0)
    torch.testing.assert_close(losses, composed_triplet(q, p, n), rtol=1e-4, atol=1e-4)

    def ours_fn():
        _cuda_ops.triplet_forward(q, p, n, 1.0)
        _cuda_ops.triplet_backward(grad, q, p, n, 1.0)

    ours = time_cuda(ours_fn)
    qa, pa, na = (t.clone().requires_grad_() for t in (q, p, n))

    def fresh():  # no gradient accumulation (it would add a read-modify-write of dq, dp, dn)
        qa.grad = pa.grad = na.grad = None

    def api_fn():  # the public op: dispatcher + autograd + sum reduction
        fresh()
        deeprank.triplet_loss(qa, pa, na, 1.0, reduction="sum").backward()

    def eager_fn():
        fresh()
        composed_triplet(qa, pa, na).sum().backward()

    baselines = {"deeprank_public_api": time_cuda(api_fn), "torch_composed_eager": time_cuda(eager_fn)}
    try:
        compiled = torch.compile(lambda a, b_, c: composed_triplet(a, b_, c).sum())

        def compiled_fn():
            fresh()
            compiled(qa, pa, na).backward()

        baselines["torch_composed_compile"] = time_cuda(compiled_fn, warmup=5)
    except Exception as e:  # torch.compile needs a working Triton; record why it did not run
        baselines["torch_composed_compile"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    # forward: read q, p, n; backward: read q, p, n (+grad), write dq, dp, dn
    floor = floors(9.0 * 4 * b * d + 8.0 * b, 0.0, bw, float("inf"))
    out = summarize(ours, floor, bw, baselines)
    out.update({"b": b, "d": d, "dtype": "float32"})
    return out


# ----------------------------------------------------------------------------------------------
# LRN
# ----------------------------------------------------------------------------------------------


def bench_lrn(shape: tuple[int, ...], bw: float) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(shape, device="cuda", generator=gen)
    g = torch.randn(shape, device="cuda", generator=gen)
    args = (5, 1e-4, 0.75, 2.0)
    torch.testing.assert_close(_cuda_ops.lrn_forward(x, *args), F.local_response_norm(x, *args))

    def ours_fn():
        _cuda_ops.lrn_forward(x, *args)
        _cuda_ops.lrn_backward(g, x, *args)

    ours = time_cuda(ours_fn)
    xa = x.clone().requires_grad_()
    module = torch.nn.LocalResponseNorm(*args)

    def api_fn():
        xa.grad = None
        deeprank.lrn(xa, *args).backward(g)

    def torch_fn():
        xa.grad = None
        module(xa).backward(g)

    baselines = {"deeprank_public_api": time_cuda(api_fn), "torch_nn_LocalResponseNorm": time_cuda(torch_fn)}
    numel = 1
    for s in shape:
        numel *= s
    # forward: read x, write y; backward: read grad_y and x, write grad_x
    floor = floors(5.0 * 4 * numel, 0.0, bw, float("inf"))
    out = summarize(ours, floor, bw, baselines)
    out.update({"shape": list(shape), "size": 5, "dtype": "float32"})
    return out


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (a smoke test; not the issue's cases)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_cuda: torch sees no CUDA GPU here; nothing measured, nothing written.", file=sys.stderr)
        return 2
    if cuda_module() is None or cuda_device_count() == 0:
        print("bench_cuda: deeprank._cuda is not built or sees no device; nothing written.", file=sys.stderr)
        return 2

    device = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(device)
    name = torch.cuda.get_device_name(device)
    print(f"device: {name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.1f} GiB)")
    bw = measure_bandwidth(args.quick)
    peak = measure_fp32_peak(args.quick)
    print(
        f"measured HBM bandwidth (D2D copy): {bw / 1e9:.0f} GB/s; "
        f"FP32 peak (torch.mm): {peak / 1e12:.1f} TFLOP/s"
    )

    if args.quick:
        topk_cases = [(64, 100_000, 128, 100), (1, 100_000, 128, 100)]
        triplet_case, lrn_shape = (2048, 1024), (16, 96, 27, 27)
    else:
        topk_cases = [
            (1024, 1_000_000, 128, 100),  # target: >= 2x torch
            (1, 1_000_000, 128, 100),  # target: >= 60% of HBM bandwidth
            (16, 1_000_000, 128, 100),
            (1024, 1_000_000, 128, 1024),
        ]
        triplet_case, lrn_shape = (32768, 8192), (128, 96, 55, 55)

    results: dict[str, Any] = {"topk": [], "triplet": None, "lrn": None}
    for case in topk_cases:
        r = bench_topk(*case, bw, peak)
        results["topk"].append(r)
        t = r["baselines"]["torch_addmm_topk_fp32"]
        print(
            f"topk M={case[0]} N={case[1]} D={case[2]} K={case[3]}: {r['ours']['median_ms']:.3f} ms, "
            f"torch {t['median_ms']:.3f} ms ({t['speedup_vs_this']:.2f}x), "
            f"{r['fraction_of_floor']:.0%} of floor, {r['achieved_bandwidth_GBps']:.0f} GB/s"
        )
        torch.cuda.empty_cache()
    r = bench_triplet(*triplet_case, bw)
    results["triplet"] = r
    print(
        f"triplet B={triplet_case[0]} D={triplet_case[1]} fwd+bwd: {r['ours']['median_ms']:.3f} ms, "
        f"{r['fraction_of_hbm_bandwidth']:.0%} of HBM; "
        + ", ".join(f"{k} {v.get('median_ms', float('nan')):.3f} ms" for k, v in r["baselines"].items())
    )
    torch.cuda.empty_cache()
    r = bench_lrn(lrn_shape, bw)
    results["lrn"] = r
    print(
        f"lrn {lrn_shape} fwd+bwd: {r['ours']['median_ms']:.3f} ms, "
        f"{r['fraction_of_hbm_bandwidth']:.0%} of HBM; "
        + ", ".join(f"{k} {v['median_ms']:.3f} ms" for k, v in r["baselines"].items())
    )

    checks = {}
    if not args.quick:
        big, single = results["topk"][0], results["topk"][1]
        checks = {
            "topk_speedup_m1024": big["baselines"]["torch_addmm_topk_fp32"]["speedup_vs_this"],
            "topk_hbm_fraction_m1": single["fraction_of_hbm_bandwidth"],
            "triplet_hbm_fraction": results["triplet"]["fraction_of_hbm_bandwidth"],
            "lrn_hbm_fraction": results["lrn"]["fraction_of_hbm_bandwidth"],
        }
        for key, value in checks.items():
            print(
                f"target {key}: measured {value:.2f}, wanted >= {TARGETS[key]:.2f}: "
                f"{'met' if value >= TARGETS[key] else 'NOT met'}"
            )

    data = {
        "device": name,
        "sm_count": props.multi_processor_count,
        "total_memory_bytes": props.total_memory,
        "quick": args.quick,
        "measured_hbm_bandwidth_Bps": bw,
        "measured_fp32_peak_flops": peak,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "deeprank": deeprank.build_info(),
        "cuda_runtime_of_deeprank": cuda_module().cuda_runtime_version,
        "python": platform.python_version(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "targets": TARGETS,
        "measured_against_targets": {k: {"value": v, "met": v >= TARGETS[k]} for k, v in checks.items()},
        "results": results,
    }
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()
    path = args.out / f"cuda_{slug}{'_quick' if args.quick else ''}.json"
    write_json_atomic(path, data)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
