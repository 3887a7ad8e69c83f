"""Distributed training on one machine: 2 processes x 1 thread vs 1 process x 2 threads, and the gather.

Both (and, for reference, 1 process x 1 thread) run ``deeprank train`` on the bundled Fashion-MNIST
(small preset, 28 px, batch-all mining) with the same global batch (``--batch`` triplets per step:
all in one process, half per rank) for ``--seconds`` training seconds each; triplets/s is the
checkpoint's triplets over its training seconds (start-up excluded). The 2-process run is started
as torchrun would (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` on 127.0.0.1, gloo).

The per-step cost of the distributed extras is then timed alone on 2 gloo ranks: the embedding and
label gather of :func:`deeprank.training.distributed.gather_triplets` (``[3B, d]`` float32 per rank,
d = 64 as the small preset and 4096 as the paper's) and the small float collectives each step adds
(the rank-0 budget broadcast, the error check, the loss sum).

    PYTHONPATH=. python benchmarks/bench_ddp.py              # about 2 minutes on 2 cores
    PYTHONPATH=. python benchmarks/bench_ddp.py --seconds 30 --batch 64

Writes ``benchmarks/results/ddp.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS_DIR, machine_info, print_table, write_json


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int, threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if world > 1:
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
    return env


def _run(argv: list[str], world: int, threads: int, timeout: float) -> None:
    port = _port()
    procs = [
        subprocess.Popen([sys.executable, *argv], env=_env(r, world, port, threads), stderr=subprocess.PIPE)
        for r in range(world)
    ]
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        if p.returncode:
            raise SystemExit(f"a rank failed ({p.returncode}):\n{err.decode()[-2000:]}")


def train_rate(world: int, threads: int, batch: int, seconds: float, folder: Path) -> dict:
    out = folder / f"train-{world}x{threads}"
    argv = ["-m", "deeprank", "train", "-o", str(out), "--device", "cpu", "--no-progress"]
    argv += ["--threads", str(threads), "--batch-size", str(batch // world)]
    argv += ["--time-budget", str(seconds), "--checkpoint-every", "0"]
    _run(argv, world, threads, timeout=seconds + 300)
    progress = json.loads((out / "config.json").read_text())["progress"]
    return {
        "processes": world,
        "threads_each": threads,
        "global_batch": batch,
        "steps": progress["step"],
        "triplets": progress["triplets"],
        "train_s": progress["elapsed_s"],
        "triplets_per_s": round(progress["triplets"] / progress["elapsed_s"], 1),
        "step_ms": round(1000 * progress["elapsed_s"] / progress["step"], 2),
    }


def gather_worker(out: Path, batch: int, repeats: int) -> None:
    """One rank of the collective timings (run by :func:`gather_costs`)."""
    import torch

    from deeprank.training.distributed import (
        agree_on_error,
        broadcast_floats,
        detect_world,
        gather_triplets,
        start,
        stop,
        sum_floats,
    )

    torch.set_num_threads(1)
    world = detect_world()
    start(world, torch.device("cpu"))
    local = batch // world.size
    rows = []
    for dim in (64, 4096):
        e = torch.randn(3 * local, dim, requires_grad=True)
        labels = torch.randint(0, 10, (3 * local,))
        for _ in range(5):
            gather_triplets(e, labels, world)
        sum_floats([0.0], world)  # line up before timing
        t = time.perf_counter()
        for _ in range(repeats):
            gather_triplets(e, labels, world)
        ms = 1000 * (time.perf_counter() - t) / repeats
        rows.append({"what": f"gather_triplets [3x{local}, {dim}] per rank", "ms": round(ms, 3)})
    t = time.perf_counter()
    for _ in range(repeats):
        broadcast_floats([0.5, 0.0, 0.0], world)
        agree_on_error(None, world)
        sum_floats([1.0, float(local)], world)
    ms = 1000 * (time.perf_counter() - t) / repeats
    rows.append(
        {"what": "per-step small collectives (broadcast + error check + loss sum)", "ms": round(ms, 3)}
    )
    if world.is_main:
        (out / "gather.json").write_text(json.dumps(rows))
    stop()


def gather_costs(batch: int, repeats: int, folder: Path) -> list[dict]:
    argv = [str(Path(__file__).resolve()), "--gather-worker", str(folder), "--batch", str(batch)]
    _run([*argv, "--repeats", str(repeats)], world=2, threads=1, timeout=300)
    return json.loads((folder / "gather.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="training seconds per configuration")
    parser.add_argument("--batch", type=int, default=64, help="global triplets per step")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per collective")
    parser.add_argument("--output", default=str(RESULTS_DIR / "ddp.json"))
    parser.add_argument("--gather-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gather_worker:
        gather_worker(Path(args.gather_worker), args.batch, args.repeats)
        return
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rates = [train_rate(w, t, args.batch, args.seconds, folder) for w, t in ((1, 2), (2, 1), (1, 1))]
        collectives = gather_costs(args.batch, args.repeats, folder)
    info = machine_info()
    info["load_average_before"] = list(load_before)
    print_table(rates, list(rates[0]), "training (Fashion-MNIST, small preset, batch-all)")
    print_table(collectives, ["what", "ms"], "per-step distributed extras, 2 gloo ranks on 127.0.0.1")
    payload = {
        "machine": info,
        "seconds_per_configuration": args.seconds,
        "wall_s": round(time.perf_counter() - started, 1),
        "training": rates,
        "collectives_2_ranks": collectives,
        "ratio_2x1_over_1x2": round(rates[1]["triplets_per_s"] / rates[0]["triplets_per_s"], 3),
    }
    print(f"\nwrote {write_json(args.output, payload)}")


if __name__ == "__main__":
    main()
