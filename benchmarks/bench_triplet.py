"""Benchmark the fused triplet ranking loss against what users would otherwise write.

Compared, in one run and taking turns (float32 on CPU, margin 1, mean reduction):
  deeprank          deeprank.triplet_loss: one pass forward, one pass backward (C++ kernels).
  torch composed    clamp(margin + ((q-p)**2).sum(1) - ((q-n)**2).sum(1), min=0).mean() with autograd:
                    the same function, the way it is usually hand-written.
  nn.TripletMarginLoss  torch's built-in; NOTE a different function (non-squared p-norm distance with
                    an eps), listed because it is what people reach for.
Passes: forward only (no grad) and forward+backward (gradients for q, p and n).

The floor is the time to move the bytes that any implementation must move at the measured copy
bandwidth: forward reads q, p, n (3BD floats); forward+backward also reads them again and writes
dq, dp, dn (9BD floats in all).

Usage: python benchmarks/bench_triplet.py [--repeats 5] [--quick] [--out benchmarks/results/triplet.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _ops_bench_util as util  # noqa: E402

import deeprank  # noqa: E402

CASES = [(4096, 4096), (65536, 256)]
QUICK_CASES = [(512, 512), (4096, 64)]
MARGIN = 1.0


def torch_composed(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return torch.clamp(MARGIN + ((q - p) ** 2).sum(1) - ((q - n) ** 2).sum(1), min=0).mean()


def bench_case(b: int, d: int, repeats: int, bandwidth: float) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    # Negatives a little farther on average, so that about half of the triplets are active.
    q, p = torch.randn(b, d, generator=gen), torch.randn(b, d, generator=gen)
    n = torch.randn(b, d, generator=gen) * (1 + 1 / d**0.5)
    with torch.no_grad():
        losses = deeprank.triplet_loss(q, p, n, MARGIN, "none")
        torch.testing.assert_close(losses.mean(), torch_composed(q, p, n), rtol=1e-4, atol=1e-3)
    active = float((losses > 0).double().mean())

    margin_loss = torch.nn.TripletMarginLoss(margin=MARGIN, p=2.0)
    methods = {
        "deeprank": lambda a, c, e: deeprank.triplet_loss(a, c, e, MARGIN),
        "torch composed": torch_composed,
        "nn.TripletMarginLoss": margin_loss,
    }
    leaves = [t.clone().requires_grad_() for t in (q, p, n)]

    def forward_only(fn):
        def run():
            with torch.no_grad():
                fn(q, p, n)

        return run

    def forward_backward(fn):
        def run():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward()

        return run

    elem = 4
    floors = {"forward": (3 * b * d + b) * elem, "forward+backward": (9 * b * d + 2 * b) * elem}
    rows = []
    for pass_name, wrap in (("forward", forward_only), ("forward+backward", forward_backward)):
        times = util.time_interleaved({name: wrap(fn) for name, fn in methods.items()}, repeats)
        ours = util.summarize(times["deeprank"])["median_s"]
        floor_s = floors[pass_name] / bandwidth
        for name, samples in times.items():
            s = util.summarize(samples)
            rows.append(
                {
                    "case": f"{b}x{d}",
                    "B": b,
                    "D": d,
                    "pass": pass_name,
                    "method": name,
                    **s,
                    "time_vs_deeprank": s["median_s"] / ours,
                    "bytes_floor": floors[pass_name],
                    "floor_s": floor_s,
                    "fraction_of_floor": floor_s / s["median_s"],
                    "active_fraction": active,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    args, out = util.parse_args("triplet", __doc__.split("\n")[0], argv)
    machine, bw = util.announce(args.quick)
    rows = []
    for b, d in QUICK_CASES if args.quick else CASES:
        rows += bench_case(b, d, args.repeats, bw["best"])

    util.print_rows(rows)
    util.write_json(
        out,
        {
            "benchmark": "triplet",
            "dtype": "float32",
            "margin": MARGIN,
            "reduction": "mean",
            "repeats": args.repeats,
            "note": "nn.TripletMarginLoss computes a different function (non-squared p-norm distance)",
            "machine": machine,
            "bandwidth_bytes_per_s": bw,
            "results": rows,
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
