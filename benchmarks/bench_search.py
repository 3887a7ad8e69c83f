"""Search backends side by side on the same vectors: exact (deeprank's top-K kernel), FAISS HNSW and
IVF-PQ, and Milvus Lite. For each: build time, memory, queries/s at k=10 and recall@10 against exact.

Two collections in one run:

- ``random``: ``--n`` x 128 standard normal vectors (1,000,000 by default), 1,000 fresh queries;
- ``fashion``: real embeddings of the 70,000 Fashion-MNIST images (train split from
  ``/usr/share/datasets/fashion-mnist`` plus the bundled test split) by the ``small`` model
  (``--checkpoint``, else an untrained seeded one), 1,000 held-out images as queries.

    PYTHONPATH=. python benchmarks/bench_search.py                       # full size (tens of minutes)
    PYTHONPATH=. python benchmarks/bench_search.py --n 50000 --fashion 10000 --out /tmp/s.json

Memory is the growth of resident memory (this process and its children: Milvus Lite runs as one)
while building, plus the index's own size where the library reports it. Queries are searched as one
batch (throughput); threads are what the machine has (``--threads``). Writes
``benchmarks/results/search.json`` with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, print_table, write_json  # noqa: E402

K = 10


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of ``pid`` and its descendants (Linux /proc)."""
    total = 0
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        own = os.getpid() if pid == "self" else pid
        for task in os.listdir(f"/proc/{own}/task"):
            with open(f"/proc/{own}/task/{task}/children", encoding="utf-8") as fh:
                for child in fh.read().split():
                    total += rss_bytes(int(child))
    except OSError:
        pass
    return total


def random_collection(n: int, d: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):  # in blocks: no float64 temporary of the full size
        stop = min(n, start + 100_000)
        base[start:stop] = rng.standard_normal((stop - start, d), dtype=np.float32)
    return base, rng.standard_normal((queries, d), dtype=np.float32)


def fashion_collection(count: int, queries: int, checkpoint: str | None, seed: int) -> tuple[Any, Any, dict]:
    """Embeddings of ``count`` Fashion-MNIST images (train + test splits); the last ``queries`` query."""
    import torch

    from deeprank.data import load_fashion_mnist
    from deeprank.embedding import embed_tensor
    from deeprank.models import MultiScaleNet
    from deeprank.models.checkpoint import resolve_model

    parts = []
    for split in ("train", "test"):
        try:
            parts.append(load_fashion_mnist(split)[0])
        except FileNotFoundError:
            print(f"bench_search: no Fashion-MNIST {split} split here; using what there is", file=sys.stderr)
    images = np.concatenate(parts)[:count]
    if checkpoint:
        model, _ = resolve_model(checkpoint)
    else:
        torch.manual_seed(seed)
        model = MultiScaleNet(in_channels=1).eval()
    start = time.perf_counter()
    vectors = embed_tensor(model, torch.from_numpy(images[:, None]))
    info = {
        "images": int(images.shape[0]),
        "model": checkpoint or "untrained small MultiScaleNet (seeded)",
        "dim": int(vectors.shape[1]),
        "embed_seconds": time.perf_counter() - start,
    }
    return vectors[:-queries], vectors[-queries:], info


def measure(name: str, build, search, exact_keys: np.ndarray | None, queries: np.ndarray) -> dict:
    """Build (timed, memory measured), search the queries once untimed (warm) then timed."""
    before = rss_bytes()
    start = time.perf_counter()
    backend = build()
    build_s = time.perf_counter() - start
    grown = max(0, rss_bytes() - before)
    search(backend, queries[:10])
    start = time.perf_counter()
    _, keys = search(backend, queries)
    search_s = time.perf_counter() - start
    from deeprank.index.backend import recall_at_k

    row = {
        "method": name,
        "build_s": round(build_s, 2),
        "rss_growth_mib": round(grown / 2**20, 1),
        "queries_per_s": round(queries.shape[0] / search_s, 1),
        "recall@10": 1.0 if exact_keys is None else round(recall_at_k(keys, exact_keys), 4),
    }
    size = getattr(backend, "size_bytes", None)
    if size is not None:
        row["index_mib"] = round(size / 2**20, 1)
    return {"row": row, "keys": keys, "backend": backend}


def query_variant(built: dict, backend: Any, params: dict, want: np.ndarray, queries: np.ndarray) -> dict:
    """The built index searched again with other query-time parameters (no rebuild)."""
    from deeprank.index.backend import recall_at_k

    start = time.perf_counter()
    _, keys = backend.search(queries, K, **params)
    seconds = time.perf_counter() - start
    label = ", ".join(f"{k}={v}" for k, v in params.items())
    return {
        "method": f"{built['method']} ({label})",
        "build_s": built["build_s"],
        "rss_growth_mib": built["rss_growth_mib"],
        "index_mib": built.get("index_mib"),
        "queries_per_s": round(queries.shape[0] / seconds, 1),
        "recall@10": round(recall_at_k(keys, want), 4),
        "params": params,
    }


def run_collection(label: str, base: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> list[dict]:
    import faiss

    from deeprank.index import FaissIndex, FlatIndex
    from deeprank.index.milvus_index import MilvusIndex

    n, d = base.shape
    print(f"== {label}: {n} x {d}, {queries.shape[0]} queries", flush=True)
    rows = []

    def exact_build():
        index = FlatIndex(base, copy=False)
        index.norms  # noqa: B018 - the cached norms are part of the build
        index.size_bytes = base.nbytes + 4 * n + 8 * n
        return index

    exact = measure("exact (deeprank topk)", exact_build, lambda b, q: b.search(q, K), None, queries)
    rows.append(exact["row"])
    want = exact["keys"]
    print(rows[-1], flush=True)
    del exact

    def faiss_build(kind: str, **options):
        def build():
            index = FaissIndex.build(base, kind=kind, **options)
            index.size_bytes = faiss.serialize_index(index.index).nbytes if n <= 2_000_000 else None
            return index

        return build

    nlist = 4096 if n >= 64 * 4096 else max(16, int(4 * np.sqrt(n)))  # "IVF4096,PQ32" at 1M
    pq = max(m for m in (8, 16, 32) if d % m == 0)
    for name, kind, options, variant in (
        ("faiss HNSW32", "HNSW32", {"ef_search": 64}, {"ef_search": 256}),
        (
            f"faiss IVF{nlist},PQ{pq}",
            f"IVF{nlist},PQ{pq}",
            {"nprobe": 16, "train_size": min(n, 64 * nlist)},
            {"nprobe": 128},
        ),
    ):
        result = measure(name, faiss_build(kind, **options), lambda b, q: b.search(q, K), want, queries)
        rows.append(result["row"] | {"params": result["backend"].search_params()})
        print(rows[-1], flush=True)
        rows.append(query_variant(rows[-1], result["backend"], variant, want, queries))  # same index
        print(rows[-1], flush=True)
        del result

    folder = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
    try:

        def milvus_build():
            index = MilvusIndex.create(folder / "bench.db", "bench", d)
            index.add(base, np.arange(n), batch_size=args.milvus_batch, progress=False)
            return index

        m = min(args.milvus_queries, queries.shape[0])  # Milvus Lite answers slowly: fewer queries
        result = measure("milvus lite", milvus_build, lambda b, q: b.search(q, K), want[:m], queries[:m])
        result["row"]["queries"] = m
        on_disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        result["row"]["index_mib"] = round(on_disk / 2**20, 1)
        rows.append(result["row"])
        print(rows[-1], flush=True)
        del result
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="random vectors (1,000,000)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--fashion", type=int, default=70_000, help="Fashion-MNIST images (70,000; 0 skips)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--checkpoint", help="model for the Fashion-MNIST embeddings (default: untrained)")
    parser.add_argument("--milvus-batch", type=int, default=10_000)
    parser.add_argument("--milvus-queries", type=int, default=200, help="queries sent to Milvus Lite (200)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS_DIR / "search.json"))
    args = parser.parse_args()

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    started = time.time()
    load_before = os.getloadavg()
    collections: dict[str, Any] = {}
    base, queries = random_collection(args.n, args.dim, args.queries, args.seed)
    rows = run_collection("random", base, queries, args)
    collections["random"] = {"n": args.n, "dim": args.dim, "rows": rows}
    del base
    if args.fashion:
        base, queries, info = fashion_collection(args.fashion, args.queries, args.checkpoint, args.seed)
        rows = run_collection("fashion", base, queries, args)
        collections["fashion"] = {"n": int(base.shape[0]), **info, "rows": rows}
    columns = ["method", "build_s", "rss_growth_mib", "index_mib", "queries_per_s", "recall@10"]
    for label, facts in collections.items():
        print_table(facts["rows"], columns, title=f"{label}: {facts['n']} x {facts['dim']}, k={K}")
    payload = {
        "benchmark": "search",
        "k": K,
        "queries": args.queries,
        "threads": args.threads,
        "collections": collections,
        "wall_seconds": round(time.time() - started, 1),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": machine_info(),
    }
    print(f"wrote {write_json(args.out, payload)} in {payload['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
