"""Load test of ``deeprank serve`` on 127.0.0.1: throughput and p50/p99 latency with concurrent clients.

The server runs in a subprocess (as ``deeprank serve`` would); a fixed number of client threads send a
fixed number of requests per phase: queries by id (search only) and image uploads (decode + embed +
search), with micro-batching on (the default) and off (``max_batch=1``), side by side in one run, and
``GET /health`` as the HTTP floor (the same clients and server doing no search work).

    PYTHONPATH=. python benchmarks/bench_serve.py                 # builds a 2000-image index in a temp dir
    PYTHONPATH=. python benchmarks/bench_serve.py --index photos.index --clients 8 --requests 400

Writes ``benchmarks/results/serve.json``. Only loopback traffic; every loop is bounded.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_index(root: Path, count: int) -> Path:
    """Fashion-MNIST test images as PNG files and an index built with an untrained ``small`` model."""
    import torch

    from deeprank.data import export_image_folder, load_fashion_mnist
    from deeprank.index import Index
    from deeprank.models import MultiScaleNet
    from deeprank.models.checkpoint import save_checkpoint

    images, labels = load_fashion_mnist("test")
    export_image_folder(images[:count], labels[:count], root / "images")
    torch.manual_seed(0)
    save_checkpoint(root / "model", MultiScaleNet("small", in_channels=1))
    return Index.build(root / "model", root / "images", progress=False).save(root / "index")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``deeprank.serve.run`` in a subprocess on 127.0.0.1, stopped on exit."""

    def __init__(self, index: Path, max_batch: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = (
            "from deeprank.serve import run; "
            f"run({str(index)!r}, host='127.0.0.1', port={self.port}, log_level='warning', "
            f"max_batch={max_batch})"
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env)

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not start within 120 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(20)


def run_phase(url: str, make_request, clients: int, requests: int, max_seconds: float) -> dict:
    """``requests`` requests from ``clients`` threads (or until ``max_seconds``): latencies and wall time."""
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    remaining = [requests]
    stop_at = time.monotonic() + max_seconds

    def worker(seed: int) -> None:
        nonlocal errors
        rnd = random.Random(seed)
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.monotonic() < stop_at:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                start = time.perf_counter()
                ok = make_request(client, rnd).status_code == 200
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    errors += not ok

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "seconds": time.perf_counter() - start, "errors": errors}


def summarize(runs: list[dict], clients: int) -> dict:
    """Throughput and latency percentiles over all rounds of one phase."""
    lat = np.concatenate([r["latencies"] for r in runs]) * 1000.0
    seconds = sum(r["seconds"] for r in runs)
    return {
        "clients": clients,
        "requests": int(lat.size),
        "errors": int(sum(r["errors"] for r in runs)),
        "seconds": round(seconds, 3),
        "throughput_rps": round(lat.size / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "mean_ms": round(float(lat.mean()), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", type=Path, help="index directory (default: build one from Fashion-MNIST)")
    parser.add_argument("--count", type=int, default=2000, help="images in the built index")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=600, help="requests per phase and configuration")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds the requests are split in")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time cap per phase")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    args = parser.parse_args()

    import httpx  # noqa: F401 - fail early without the client
    from PIL import Image

    from deeprank.index import Index

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="deeprank-bench-serve-") as tmp:
        index_dir = args.index or build_index(Path(tmp), args.count)
        index = Index.load(index_dir)
        ids = [str(i) for i in index.ids]
        uploads = []
        for item in random.Random(0).sample(index.ids, min(64, len(index))):
            buffer = io.BytesIO()
            Image.open(index.path_of(item)).save(buffer, format="PNG")
            uploads.append(buffer.getvalue())

        def by_id(client, rnd):
            return client.post("/search", data={"id": rnd.choice(ids), "k": args.k})

        def by_upload(client, rnd):
            data = rnd.choice(uploads)
            return client.post("/search", files={"image": ("q.png", data)}, data={"k": args.k})

        def health(client, rnd):
            return client.get("/health")

        # Both servers stay up; phases alternate between them round by round, so a burst of load
        # from elsewhere on the machine hits both configurations alike.
        configs = (32, 1)
        phases = [("health", health), ("id", by_id), ("upload", by_upload)]
        runs: dict[tuple[str, int], list[dict]] = {}
        stats: dict[tuple[str, int], dict[str, int]] = {}
        per_round = max(1, args.requests // args.rounds)
        with Server(Path(index_dir), configs[0]) as batched, Server(Path(index_dir), configs[1]) as single:
            servers = dict(zip(configs, (batched, single), strict=True))
            for server in servers.values():
                for _, fn in phases:  # warm-up
                    run_phase(server.url, fn, args.clients, 40, args.max_seconds)
            for _ in range(args.rounds):
                for name, fn in phases:
                    for max_batch, server in servers.items():
                        if name == "health" and max_batch == 1:
                            continue  # the floor does not depend on batching
                        before = httpx.get(server.url + "/health").json()["stats"]
                        runs.setdefault((name, max_batch), []).append(
                            run_phase(server.url, fn, args.clients, per_round, args.max_seconds)
                        )
                        after = httpx.get(server.url + "/health").json()["stats"]
                        total = stats.setdefault((name, max_batch), dict.fromkeys(after, 0))
                        for key in after:
                            total[key] += after[key] - before[key]
        results = []
        for (name, max_batch), phase_runs in runs.items():
            row = {"query": name, "max_batch": max_batch, **summarize(phase_runs, args.clients)}
            st = stats[(name, max_batch)]
            if name != "health":
                row["mean_search_batch"] = round(st["searched_queries"] / max(st["search_batches"], 1), 2)
            if name == "upload":
                row["mean_embed_batch"] = round(st["embedded_images"] / max(st["embed_batches"], 1), 2)
            results.append(row)
            print(
                f"{name:>6} max_batch={max_batch:<2} {row['throughput_rps']:8.1f} req/s  "
                f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                f"batch {row.get('mean_embed_batch', row.get('mean_search_batch', '-'))}  "
                f"errors {row['errors']}",
                flush=True,
            )

    report = {
        "benchmark": "serve",
        "index": {"count": len(index), "dim": index.dim, "built": args.index is None},
        "k": args.k,
        "clients": args.clients,
        "requests_per_phase": args.requests,
        "rounds": args.rounds,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # Other work on the machine skews every number; the 1-minute load average says how much.
            "loadavg_1min_before": round(load_before, 2),
            "loadavg_1min_after": round(os.getloadavg()[0], 2),
        },
        "results": results,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    from deeprank.io import write_json_atomic

    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
