"""Benchmark deeprank's local response normalization against torch.nn.LocalResponseNorm.

Compared, in one run and taking turns (float32 on CPU, AlexNet's size 5, alpha 1e-4, beta 0.75, k 2):
  deeprank      deeprank.nn.LocalResponseNorm: a sliding window over channels, one pass forward and one
                pass backward (the backward recomputes the window sums from x).
  torch         torch.nn.LocalResponseNorm (square, pad, avg_pool3d, pow, divide; autograd backward).
Passes: forward only (no grad) and forward+backward (gradient for x given a fixed grad_y).
Cases: the LRN layers of the paper's ConvNet (AlexNet) on a batch of 64: after conv1 (64x96x55x55)
and after conv2 (64x256x27x27), in the default (NCHW) layout; then channels-last (NHWC) inputs, the
layout CPU training uses: AlexNet conv1 and the `small` preset's two LRN layers on a training step's
192 images (192x16x14x14, 192x32x7x7). For those a third method is timed:
  deeprank via NCHW  what deeprank did before it had an NHWC kernel: copy to NCHW, normalise, copy
                     the result (and, backward, the gradient) between layouts.

The floor is the time to move the bytes any implementation must move at the measured copy bandwidth:
forward reads x and writes y (2 tensors); forward+backward also reads grad_y and x and writes
grad_x (5 tensors in all).

Usage: python benchmarks/bench_lrn.py [--repeats 5] [--quick] [--out benchmarks/results/lrn.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _ops_bench_util as util  # noqa: E402

import deeprank  # noqa: E402

PARAMS = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}
NCHW, NHWC = "nchw", "nhwc"
CASES = [
    ((64, 96, 55, 55), NCHW),
    ((64, 256, 27, 27), NCHW),
    ((64, 96, 55, 55), NHWC),
    ((192, 16, 14, 14), NHWC),
    ((192, 32, 7, 7), NHWC),
]
QUICK_CASES = [((4, 96, 55, 55), NCHW), ((4, 256, 27, 27), NCHW), ((4, 96, 55, 55), NHWC)]


class _ViaContiguous(torch.nn.Module):
    """deeprank's LRN behind the layout copies a caller without an NHWC kernel has to make."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = deeprank.nn.LocalResponseNorm(**PARAMS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.contiguous()).contiguous(memory_format=torch.channels_last)


def bench_case(shape: tuple[int, ...], layout: str, repeats: int, bandwidth: float) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen) * 10  # activations large enough that the scale matters
    grad_y = torch.randn(*shape, generator=gen)
    if layout == NHWC:
        x = x.contiguous(memory_format=torch.channels_last)
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
    ours, theirs = deeprank.nn.LocalResponseNorm(**PARAMS), torch.nn.LocalResponseNorm(**PARAMS)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    methods = {"deeprank": ours, "torch nn.LocalResponseNorm": theirs}
    if layout == NHWC:
        methods["deeprank via NCHW"] = _ViaContiguous()
    leaf = x.clone().requires_grad_()

    def forward_only(module):
        def run():
            with torch.no_grad():
                module(x)

        return run

    def forward_backward(module):
        def run():
            leaf.grad = None
            module(leaf).backward(grad_y)

        return run

    tensor_bytes = x.numel() * x.element_size()
    floors = {"forward": 2 * tensor_bytes, "forward+backward": 5 * tensor_bytes}
    case = "x".join(map(str, shape)) + ("" if layout == NCHW else " NHWC")
    rows = []
    for pass_name, wrap in (("forward", forward_only), ("forward+backward", forward_backward)):
        times = util.time_interleaved({name: wrap(m) for name, m in methods.items()}, repeats)
        ours_s = util.summarize(times["deeprank"])["median_s"]
        floor_s = floors[pass_name] / bandwidth
        for name, samples in times.items():
            s = util.summarize(samples)
            rows.append(
                {
                    "case": case,
                    "shape": list(shape),
                    "layout": layout,
                    "pass": pass_name,
                    "method": name,
                    **s,
                    "time_vs_deeprank": s["median_s"] / ours_s,
                    "bytes_floor": floors[pass_name],
                    "floor_s": floor_s,
                    "fraction_of_floor": floor_s / s["median_s"],
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    args, out = util.parse_args("lrn", __doc__.split("\n")[0], argv)
    machine, bw = util.announce(args.quick)
    rows = []
    for shape, layout in QUICK_CASES if args.quick else CASES:
        rows += bench_case(shape, layout, args.repeats, bw["best"])

    util.print_rows(rows)
    util.write_json(
        out,
        {
            "benchmark": "lrn",
            "dtype": "float32",
            "params": PARAMS,
            "repeats": args.repeats,
            "machine": machine,
            "bandwidth_bytes_per_s": bw,
            "results": rows,
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
