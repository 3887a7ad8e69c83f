"""Soak test of training memory: train on an image folder for a given time and record RSS over time.

Usage::

    python scripts/soak_train.py --duration 1800 [--data DIR | --images 20000] [--interval 60]

Without ``--data`` it writes a PNG folder of the first ``--images`` Fashion-MNIST training images
(the Debian ``dataset-fashion-mnist`` package; the bundled test split otherwise) into ``--work``.
It then runs ``deeprank.training.train`` in this process for ``--duration`` seconds (defaults
otherwise) while a thread reads this process's resident memory (``VmRSS`` in /proc/self/status)
every ``--interval`` seconds, and writes ``benchmarks/results/soak_train.json``: the samples, how long
it ran, the steps and triplets done, and the growth from the first sample after warm-up (``--warmup``
seconds) to the end. Exit status 1 if that growth exceeds ``--max-growth-mb``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deeprank.data.fashion_mnist import DEBIAN_DIR, export_image_folder, load_fashion_mnist  # noqa: E402
from deeprank.io import write_json_atomic  # noqa: E402
from deeprank.models.checkpoint import load_config  # noqa: E402
from deeprank.training import TrainConfig, train  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "soak_train.json"


def rss_mb() -> float:
    """This process's resident set size in MiB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_folder(work: Path, count: int) -> tuple[Path, str]:
    """A PNG folder (a sub-folder per class) of ``count`` Fashion-MNIST images, and what it holds."""
    split = "train" if (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file() else "test"
    folder = work / f"fashion-mnist-{split}-{count}"
    if not (folder / ".complete").is_file():
        images, labels = load_fashion_mnist(split)
        export_image_folder(images[:count], labels[:count], folder)
        (folder / ".complete").write_text("")
    return folder, f"fashion-mnist:{split} first {count} images as 28 px PNG files"


class Sampler(threading.Thread):
    """Reads RSS at the start and every ``interval`` seconds until stopped (all while training)."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval, self.start_time = interval, time.monotonic()
        self.samples: list[dict[str, float]] = []
        self.done = threading.Event()

    def sample(self) -> None:
        t = round(time.monotonic() - self.start_time, 1)
        self.samples.append({"t_s": t, "rss_mb": round(rss_mb(), 1)})

    def run(self) -> None:
        self.sample()
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.done.set()
        self.join()  # no sample now: the run has returned and freed its model and images


def summarise(samples: list[dict[str, float]], warmup: float) -> dict[str, float]:
    """Growth of RSS after ``warmup`` seconds: last minus first sample, and a least-squares slope."""
    after = [s for s in samples if s["t_s"] >= warmup] or samples[-1:]
    growth = samples[-1]["rss_mb"] - after[0]["rss_mb"]
    t = [s["t_s"] / 60 for s in after]
    y = [s["rss_mb"] for s in after]
    mean_t, mean_y = sum(t) / len(t), sum(y) / len(y)
    var = sum((a - mean_t) ** 2 for a in t)
    slope = sum((a - mean_t) * (b - mean_y) for a, b in zip(t, y, strict=True)) / var if var else 0.0
    return {
        "rss_first_mb": samples[0]["rss_mb"],
        "rss_after_warmup_mb": after[0]["rss_mb"],
        "rss_peak_mb": max(s["rss_mb"] for s in samples),
        "rss_last_mb": samples[-1]["rss_mb"],
        "growth_after_warmup_mb": round(growth, 1),
        "slope_after_warmup_mb_per_min": round(slope, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="training seconds (default 1800)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between RSS samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before growth is measured")
    parser.add_argument("--data", help="an image folder (default: Fashion-MNIST PNGs written to --work)")
    parser.add_argument("--images", type=int, default=20000, help="images in the generated folder")
    parser.add_argument("--work", default="/tmp/deeprank-soak", help="folder for the data and checkpoint")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-growth-mb", type=float, default=None, help="fail above this RSS growth")
    parser.add_argument("--output", default=str(DEFAULT_OUT), help="result JSON")
    args = parser.parse_args(argv)

    work = Path(args.work)
    if args.data:
        folder, description = Path(args.data), f"image folder {args.data}"
    else:
        folder, description = make_folder(work, args.images)
    config = TrainConfig(
        data=str(folder),
        output=str(work / "run"),
        time_budget=args.duration,
        device="cpu",
        threads=args.threads,
        checkpoint_every=300.0,
        overwrite=True,
    )
    sampler = Sampler(args.interval)
    sampler.start()
    started = time.monotonic()
    train(config, progress=False)
    ran = time.monotonic() - started
    sampler.stop()

    samples = sampler.samples
    summary = summarise(samples, args.warmup)
    growth = summary["growth_after_warmup_mb"]
    progress = load_config(config.output)["progress"]
    result = {
        "what": "RSS of one `deeprank train` process on a PNG folder (defaults: small preset, batch 64)",
        "data": description,
        "ran_s": round(ran, 1),
        "duration_asked_s": args.duration,
        "interval_s": args.interval,
        "warmup_s": args.warmup,
        "steps": progress["step"],
        "triplets": progress["triplets"],
        "skipped": progress["skipped"],
        **summary,
        "samples": samples,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "note": "a shared 2-core VM (other jobs ran alongside)",
        },
    }
    write_json_atomic(args.output, result)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.max_growth_mb is not None and growth > args.max_growth_mb:
        print(f"RSS grew {growth:.1f} MiB after warm-up (limit {args.max_growth_mb})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
