"""The ``deeprank`` command: parses arguments and calls the library (no logic of its own lives here).

Sub-commands: train, plot, embed, index, query, evaluate, triplets, bench, demo, serve, info. Errors a user
can cause print one line ``deeprank: error: ...`` on stderr and exit with status 2 (``--debug`` shows
the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DeeprankError

if TYPE_CHECKING:
    import torch

    from .index import Index

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _writable_output(path: str, what: str, *, folder: bool) -> Path:
    """Check before the work that ``path`` (a folder, or a file when ``folder`` is False) can be written.

    The nearest existing folder on the way must be writable; a file where a folder must go (or the
    reverse) is refused. Errors while writing later still end as one line (``main``)."""
    target = Path(path)
    if target.exists() and target.is_dir() != folder:
        raise DeeprankError(f"{what} must be a {'folder' if folder else 'file'}: {target}")
    existing = target if folder and target.exists() else target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DeeprankError(f"cannot write {what} {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DeeprankError(f"cannot write {what} {target}: permission denied in {existing}")
    return target


def _existing_dir(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    if not p.is_dir():
        raise DeeprankError(f"{what} is not a folder: {p}")
    return p


# ------------------------------------------------------------------------------ sub-commands


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train
    from .training.config import config_from_args

    config = config_from_args(args)
    print(f"log: {Path(config.output) / 'log.jsonl'} (deeprank plot {config.output} draws it)", flush=True)
    checkpoint = train(config, progress=not args.no_progress)
    print(f"checkpoint: {checkpoint}")
    if config.val_every:
        print(f"best checkpoint (validation precision_at_1): {checkpoint / 'best'}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .evaluation.curves import plot_run

    _existing_dir(args.run, "training run folder")
    if args.output:
        _writable_output(args.output, "curves image", folder=False)
    print(f"curves: {plot_run(args.run, args.output)}")
    return 0


def _model_on(checkpoint: str | os.PathLike, device: str) -> torch.nn.Module:
    """The model of a checkpoint on ``device`` (``auto|cpu|cuda[:N]``, :func:`deeprank.devices.
    resolve_device`), remembering its directory so an index built with it records the checkpoint."""
    from .api import model_on

    return model_on(checkpoint, device)


def _index_on(path: str, model: str | None, device: str, *, verify: bool = True) -> Index:
    """An index whose query model (``model``, else the index's own checkpoint) runs on ``device``."""
    from .devices import resolve_device
    from .index import Index

    target = resolve_device(device)
    index = Index.load(path, model=None if model is None else _model_on(model, device), verify=verify)
    if target.type != "cpu" and (model is not None or index.checkpoint is not None):
        index.model.to(target)  # the index's checkpoint, loaded (and checked) on first use
    return index


def _build_index(args: argparse.Namespace) -> Index:
    """Embed ``args.folder`` (or ``hf:PATH``, ``.tar`` shards) with ``args.model`` (``embed``, ``index``)."""
    from .api import build_index
    from .data.record_specs import is_records_spec

    if not is_records_spec(args.folder):
        _existing_dir(args.folder, "image folder")
    _writable_output(args.output, "output folder", folder=True)
    index = build_index(
        args.model,
        args.folder,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        workers=args.workers,
        image_column=args.image_column,
    )
    _report_skipped(index.skipped)
    return index


_RAY_OPTIONS = ("address", "actors", "gpus_per_actor", "shard_size")


def _folder_metadata(index: Index) -> list[dict]:
    """Per item, the sub-folder it came from (``""`` at the top): a field Milvus searches can filter on."""
    return [{"folder": str(i).rpartition("/")[0]} for i in index.ids]


def cmd_embed(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        return _embed_with_ray(args)
    ray_only = [f"--{n.replace('_', '-')}" for n in _RAY_OPTIONS if getattr(args, n) is not None]
    if ray_only:
        raise DeeprankError(f"{', '.join(ray_only)} only apply with --engine ray")
    if args.format == "milvus" and not args.collection:
        raise DeeprankError("--format milvus needs --collection NAME (the output is the Milvus URI)")
    index = _build_index(args)
    if args.format == "milvus":
        report = index.to_milvus(
            args.output,
            args.collection,
            metadata=_folder_metadata(index),
            overwrite=True,
            attach=False,
            progress=not args.no_progress,
        )
        where = f"Milvus {report['uri']} collection {args.collection}"
        print(f"embedded {len(index)} images (dimension {index.dim}) -> {where}")
        return 0
    files = index.export(args.output, format=args.format)
    print(f"embedded {len(index)} images (dimension {index.dim}) -> {', '.join(str(f) for f in files)}")
    return 0


def _embed_with_ray(args: argparse.Namespace) -> int:
    """``embed --engine ray``: a resumable sharded run in OUTPUT; other formats exported beside it."""
    from .embedding.sharded_run import embed_to_shards
    from .embedding.shards import DEFAULT_SHARD_SIZE

    _existing_dir(args.folder, "image folder")
    if args.workers is not None:
        raise DeeprankError("--workers applies to the local engine; Ray decodes in its own tasks")
    run = embed_to_shards(
        args.model,
        args.folder,
        args.output,
        engine="ray",
        shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
        batch_size=args.batch_size,
        address=args.address,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor or 0.0,
        progress=not args.no_progress,
    )
    _report_skipped(run.skipped)
    print(
        f"embedded {run.embedded} images (dimension {run.dim}) in {run.shards} shards "
        f"({run.written} shards written, {run.resumed} already done) -> {run.output}"
    )
    if args.format != "npy":
        from .index import Index

        files = Index.load(run.output, verify=False).export(
            Path(args.output) / args.format, format=args.format
        )
        print(f"exported -> {', '.join(str(f) for f in files)}")
    return 0


def _approximate_options(args: argparse.Namespace) -> dict:
    """The FAISS build options given on the command line."""
    names = ("train_size", "nprobe", "ef_search")
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.on_disk:
        options["on_disk"] = True
    if options and not args.approximate:
        raise DeeprankError("--train-size, --nprobe, --ef-search and --on-disk need --approximate KIND")
    return options


def cmd_index(args: argparse.Namespace) -> int:
    options = _approximate_options(args)
    if args.approximate and args.milvus:
        raise DeeprankError("choose one approximate backend: --approximate (FAISS) or --milvus")
    index = _build_index(args)
    if args.milvus:
        collection = args.collection or _collection_name(args.output)
        report = index.to_milvus(
            args.milvus,
            collection,
            metadata=_folder_metadata(index),
            overwrite=True,
            progress=not args.no_progress,
        )
        print("milvus backend: " + json.dumps(_round(report)))
    if args.approximate:
        report = index.build_approximate(args.approximate, **options)
        print(f"approximate index ({args.approximate}): " + json.dumps(_round(report)))
    index.save(args.output, include_model=args.include_model)
    print(f"indexed {len(index)} images (dimension {index.dim}) -> {args.output}")
    return 0


def _collection_name(output: str) -> str:
    """A Milvus collection name from an index folder name (letters, digits and _)."""
    name = "".join(c if c.isalnum() else "_" for c in Path(output).resolve().name)
    return name if name[:1].isalpha() else f"index_{name}"


def cmd_query(args: argparse.Namespace) -> int:

    index = _index_on(args.index, args.model, args.device, verify=not args.no_verify)
    from .embedding import list_folder

    if args.grid:
        _writable_output(args.grid, "grid image", folder=False)
    queries: list[str] = []
    for image in args.images:  # a folder stands for all the images in it
        if not Path(image).exists():
            raise FileNotFoundError(f"query image not found: {image}")
        queries += [str(f) for f in list_folder(image)] if Path(image).is_dir() else [image]
    params = {"nprobe": args.nprobe, "ef_search": args.ef_search, "filter": args.filter}
    result = index.search(queries, k=args.k, approximate=args.approximate, **params)
    if args.json:
        print(json.dumps([{"query": q, "hits": result.hits(i)} for i, q in enumerate(queries)], indent=2))
    else:
        for i, q in enumerate(queries):
            print(f"query: {q}")
            for hit in result.hits(i):
                print(f"  {hit['rank']:>3}  {hit['distance']:.4f}  {hit['path'] or hit['id']}")
    if args.grid:
        from .evaluation.plots import result_grid

        missing = [p for row in result.paths for p in row if p is None or not Path(p).exists()]
        if missing:
            raise DeeprankError(f"cannot draw the grid: {len(missing)} result images are not on disk")
        result_grid(queries, result.paths, result.distances, args.grid, captions=result.ids)
        print(f"grid: {args.grid}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_folder

    _existing_dir(args.folder, "image folder")
    _writable_output(args.output, "output folder", folder=True)
    paths = evaluate_folder(
        _model_on(args.model, args.device),
        args.folder,
        args.output,
        triplets_csv=args.triplets,
        k=args.k,
        num_triplets=args.num_triplets,
        baselines=args.baselines,
        crops=args.crops,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print((Path(args.output) / "results.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_triplets(args: argparse.Namespace) -> int:
    from .evaluation import write_folder_triplets

    _existing_dir(args.folder, "image folder")
    _writable_output(args.output, "triplet CSV", folder=False)
    count = write_folder_triplets(args.folder, args.output, per_image=args.per_image, seed=args.seed)
    print(f"wrote {count} triplets -> {args.output}")
    return 0


def _benchmark_dir() -> Path | None:
    # Benchmarks live in the source checkout next to the package; an installed wheel has none.
    candidate = Path(__file__).resolve().parent.parent / "benchmarks"
    return candidate if candidate.is_dir() else None


def cmd_bench(args: argparse.Namespace) -> int:
    folder = _benchmark_dir()
    scripts = sorted(folder.glob("bench_*.py")) if folder else []
    if not scripts:
        raise DeeprankError(
            "no benchmark scripts found: `deeprank bench` runs benchmarks/bench_*.py from a source "
            "checkout of deeprank (they are not part of the installed package)"
        )
    names = {s.stem.removeprefix("bench_"): s for s in scripts}
    if args.list:
        print("\n".join(names))
        return 0
    chosen = args.names or list(names)
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise DeeprankError(f"unknown benchmark(s) {unknown}; available: {', '.join(names)}")
    status = 0
    for name in chosen:
        print(f"== bench_{name}.py", flush=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder.parent), env.get("PYTHONPATH")]))
        command = [sys.executable, str(names[name]), *shlex.split(args.args)]
        rc = subprocess.call(command, cwd=folder.parent, env=env)
        if rc != 0:
            print(f"deeprank: bench_{name}.py exited with status {rc}", file=sys.stderr)
            status = rc
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        args.output, quick=args.quick, train_seconds=args.train_seconds, seed=args.seed, device=args.device
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve import server
    except ImportError as exc:
        raise DeeprankError(
            f"`deeprank serve` needs the serve extra: pip install 'deeprank[serve]' ({exc})"
        ) from None
    from .devices import resolve_device

    if resolve_device(args.device).type == "cpu":  # the index loads after the port is taken
        index, model = args.index, args.model
    else:
        index, model = _index_on(args.index, args.model, args.device), None
    server.run(
        index,
        host=args.host,
        port=args.port,
        model=model,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_k=args.max_k,
        approximate=args.approximate,
        body_timeout_s=args.body_timeout,
        expose_paths=args.expose_paths,
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import build_info

    print(json.dumps(build_info(), indent=2))
    return 0


# ------------------------------------------------------------------------------ helpers


def _report_skipped(skipped: Sequence[tuple[str, str]]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
        for path, reason in skipped[:20]:
            print(f"  {path}: {reason}", file=sys.stderr)
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more", file=sys.stderr)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"deeprank: warning: {message}", file=file or sys.stderr)


def _round(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def model_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--model",
        "-m",
        required=required,
        metavar="CHECKPOINT",
        help="trained model (checkpoint directory)",
    )


def source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "folder",
        help="image folder (searched recursively), hf:PATH (a saved Hugging Face dataset, .arrow or "
        ".parquet) or WebDataset .tar shard(s)",
    )
    p.add_argument("--image-column", default="image", help="image column of hf:PATH data (image)")


def device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="where the model runs: auto (a CUDA GPU if there is one), cpu, cuda or cuda:N (auto)",
    )


def progress_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per batch (256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=_count,
        default=None,
        metavar="N",
        help="processes decoding images while the model runs (default: one per core but one, "
        "at most 8; 0: decode in-process)",
    )


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``train`` command's arguments."""
    p = sub.add_parser("train", help="train a model on images or triplets", description="Train a model.")
    try:
        from .training.config import add_train_arguments

        add_train_arguments(p)
    except ImportError:  # pragma: no cover - only in a broken install
        pass
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_embed(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``embed`` command's arguments."""
    p = sub.add_parser(
        "embed",
        help="embed an image folder and export vectors",
        description="Embed every image under FOLDER (recursive) and write embeddings.npy + metadata.json "
        "(or index.faiss, or embeddings.parquet/) to OUTPUT for other engines. With --engine ray, OUTPUT "
        "is a resumable run of shards that `deeprank query`/`serve` open as an index; other formats are "
        "exported to OUTPUT/FORMAT/.",
    )
    model_arg(p)
    source_args(p)
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument(
        "--format",
        choices=["npy", "faiss", "parquet", "milvus"],
        default="npy",
        help="export format (npy); milvus: OUTPUT is the Milvus URI (a .db file for Milvus Lite)",
    )
    p.add_argument("--collection", help="Milvus collection to write (--format milvus)")
    progress_args(p)
    workers_arg(p)
    device_arg(p)
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (default); ray: a Ray cluster (needs deeprank[ray])",
    )
    p.add_argument("--address", help="Ray cluster to join, e.g. auto (default: start a local one)")
    p.add_argument("--shard-size", type=_positive_int, default=None, help="files per shard (16384)")
    p.add_argument(
        "--actors", type=_positive_int, default=None, help="Ray embedding actors (one per CPU/GPU)"
    )
    p.add_argument(
        "--gpus-per-actor", type=_non_negative_float, default=None, help="GPUs per actor (0: CPU actors)"
    )
    p.set_defaults(func=cmd_embed)


def _add_index(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``index`` command's arguments."""
    p = sub.add_parser(
        "index",
        help="build a searchable index of an image folder",
        description="Embed every image under FOLDER and save an index directory (see deeprank.index).",
    )
    model_arg(p)
    source_args(p)
    p.add_argument("--output", "-o", required=True, help="index directory to write")
    p.add_argument("--include-model", action="store_true", help="copy the model into the index directory")
    p.add_argument(
        "--approximate",
        metavar="KIND",
        help="also build a FAISS index and report its recall: hnsw, ivfpq, or a FAISS factory string "
        "such as 'IVF4096,PQ32', 'HNSW32', 'IVF65536_HNSW32,PQ64' (needs faiss)",
    )
    p.add_argument("--train-size", type=_positive_int, help="vectors sampled to train IVF/PQ (100000)")
    p.add_argument("--nprobe", type=_positive_int, help="IVF lists searched per query, saved as the default")
    p.add_argument("--ef-search", type=_positive_int, help="HNSW search beam, saved as the default")
    p.add_argument(
        "--on-disk", action="store_true", help="store the IVF lists in a file searched memory-mapped"
    )
    p.add_argument(
        "--milvus",
        metavar="URI",
        help="also write the vectors, ids, paths and sub-folder to Milvus (a .db file: Milvus Lite) and "
        "search there with --approximate at query time (needs deeprank[milvus])",
    )
    p.add_argument("--collection", help="Milvus collection name (default: from the output folder's name)")
    progress_args(p)
    workers_arg(p)
    device_arg(p)
    p.set_defaults(func=cmd_index)


def _add_query(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``query`` command's arguments."""
    p = sub.add_parser(
        "query",
        help="find the images most like the given ones",
        description="Print the K nearest indexed images of each query image.",
    )
    p.add_argument("index", help="index directory (from `deeprank index`)")
    p.add_argument("images", nargs="+", help="query image file(s) or folder(s) of images")
    p.add_argument("-k", type=_positive_int, default=10, help="results per query (10)")
    model_arg(p, required=False)
    p.add_argument("--grid", metavar="PNG", help="also draw queries and results to this PNG")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--approximate", action="store_true", help="use the index's approximate backend")
    p.add_argument("--nprobe", type=_positive_int, help="IVF lists searched (with --approximate)")
    p.add_argument("--ef-search", type=_positive_int, help="HNSW search beam (with --approximate)")
    p.add_argument(
        "--filter", metavar="EXPR", help="metadata filter, e.g. \"category == 'shoes'\" (Milvus backend)"
    )
    p.add_argument("--no-verify", action="store_true", help="skip checksum verification of the index files")
    device_arg(p)
    p.set_defaults(func=cmd_query)


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``evaluate`` command's arguments."""
    p = sub.add_parser(
        "evaluate",
        help="measure a model (and the baselines) on a labelled folder",
        description="Evaluate on FOLDER with one sub-folder per category: similarity precision and "
        "score-at-top-K on triplets, recall@K / precision@1 / MAP@R, crop-to-source retrieval; writes "
        "results.json, results.md and a rank heat-map PNG.",
    )
    model_arg(p)
    p.add_argument("folder", help="labelled image folder (one sub-folder per category)")
    p.add_argument("--output", "-o", default="deeprank-eval", help="output folder (deeprank-eval)")
    p.add_argument(
        "--triplets", metavar="CSV", help="labelled triplets query,positive,negative (else sampled)"
    )
    p.add_argument("--num-triplets", type=_positive_int, default=2000, help="triplets to sample (2000)")
    p.add_argument("-k", type=_positive_int, default=30, help="K of score-at-top-K (30)")
    p.add_argument("--crops", type=int, default=500, help="crop queries for crop-to-source retrieval (500)")
    p.add_argument("--baselines", action="store_true", help="also evaluate the hand-crafted baselines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    device_arg(p)
    p.set_defaults(func=cmd_evaluate)


def _add_triplets(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``triplets`` command's arguments."""
    p = sub.add_parser(
        "triplets",
        help="write a triplet CSV from a labelled folder",
        description="Sample (query, positive, negative) triplets from FOLDER (one sub-folder per "
        "category): positive from the query's folder, negative from another. Paths are relative to FOLDER.",
    )
    p.add_argument("folder", help="labelled image folder")
    p.add_argument("--output", "-o", required=True, help="CSV file to write")
    p.add_argument("--per-image", type=_positive_int, default=1, help="triplets per query image (1)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_triplets)


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``bench`` command's arguments."""
    p = sub.add_parser(
        "bench",
        help="run the kernel benchmarks (source checkout)",
        description="Run benchmarks/bench_*.py from a source checkout (not part of an installed package).",
    )
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all), e.g. topk")
    p.add_argument("--list", action="store_true", help="list the benchmarks")
    p.add_argument("--args", default="", metavar="ARGS", help="arguments passed to each script, quoted")
    p.set_defaults(func=cmd_bench)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``demo`` command's arguments."""
    p = sub.add_parser(
        "demo",
        help="train, index and evaluate on bundled Fashion-MNIST",
        description="End to end on the bundled Fashion-MNIST test split: trains the small multiscale model "
        "and the single-scale ablation, indexes held-out images, evaluates against the baselines and writes "
        "results.md/results.json, a rank heat-map and result grids (about 5-8 minutes on 2 CPU cores).",
    )
    p.add_argument("--output", "-o", default="deeprank-demo", help="output folder (deeprank-demo)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny data and training)")
    p.add_argument("--train-seconds", type=float, default=None, help="total training budget (default 270)")
    p.add_argument("--seed", type=int, default=0)
    device_arg(p)
    p.set_defaults(func=cmd_demo)


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``serve`` command's arguments."""
    p = sub.add_parser(
        "serve", help="serve an index over HTTP (needs deeprank[serve])", description="Serve INDEX over HTTP."
    )
    p.add_argument("index", help="index directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 1-65535 (8000)")
    p.add_argument("--model", help="checkpoint for image queries (default: the index's)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted, in MiB (10)")
    p.add_argument("--max-k", type=_positive_int, default=100, help="largest k a request may ask for (100)")
    p.add_argument("--approximate", action="store_true", help="search the index's saved FAISS index")
    p.add_argument(
        "--body-timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="time a request body may take to arrive whole; slower ones get 408 (30)",
    )
    p.add_argument(
        "--expose-paths", action="store_true", help="give clients each hit's file path on this machine"
    )
    device_arg(p)
    p.set_defaults(func=cmd_serve)


def _add_plot(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``plot`` command's arguments."""
    p = sub.add_parser(
        "plot",
        help="draw a training run's loss and validation curves",
        description="Draw the loss and validation curves of RUN (from RUN/log.jsonl) to RUN/curves.png.",
    )
    p.add_argument("run", help="training run folder (the --output of `deeprank train`)")
    p.add_argument("--output", "-o", metavar="PNG", help="image to write (default: RUN/curves.png)")
    p.set_defaults(func=cmd_plot)


def _add_info(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``info`` command's arguments."""
    p = sub.add_parser("info", help="print build information", description="Print how deeprank was built.")
    p.set_defaults(func=cmd_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeprank",
        description="Fine-grained image similarity and search by example (Deep Ranking, CVPR 2014).",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_train,
        _add_embed,
        _add_index,
        _add_query,
        _add_evaluate,
        _add_triplets,
        _add_bench,
        _add_demo,
        _add_serve,
        _add_plot,
        _add_info,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deeprank`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning  # skipped files etc.: one line each, no source
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("deeprank: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (DeeprankError, OSError, ValueError, KeyError) as exc:  # OSError: unwritable output, full disk
        if args.debug:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        if isinstance(exc, OSError) and exc.filename and exc.strerror:
            message = f"{exc.strerror}: {exc.filename}"
        print(f"deeprank: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
