"""Embedding throughput (images/s) with decoding in-process (before) and in worker processes (after).

Real image files, in a temporary folder:

* ``photos``: JPEG crops (1024 x 768, quality 90) of the photographs under ``/usr/share/backgrounds``
  (falling back to scikit-image's sample photos), embedded at 64 px and at 224 px, RGB;
* ``fmnist``: the bundled Fashion-MNIST test images as 28 px PNG files, embedded at 64 px RGB.

Models: the ``small`` preset at 64 px and ``lite0`` at 224 px (random trunk weights: the speed is the
same). Each configuration runs :func:`deeprank.embedding.embed_images` with ``workers=0`` (the
in-process path) and with worker processes, plus the two ceilings: decoding alone (one process) and
the model alone on decoded pixels. With enough cores the rate with workers approaches the model's;
on a shared 2-core machine the workers and the model compete for the same cores (the load average is
recorded with the results).

    PYTHONPATH=. python benchmarks/bench_embed.py                 # ~2 minutes on 2 cores
    PYTHONPATH=. python benchmarks/bench_embed.py --photos 64 --workers 0 1 2 4

Writes ``benchmarks/results/embed.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS_DIR, machine_info, print_table, write_json
from PIL import Image

PHOTO_SIZE = (1024, 768)


def source_photos() -> list[Path]:
    found = sorted(Path("/usr/share/backgrounds").rglob("*.jpg"))
    if not found:
        import skimage

        found = sorted(Path(skimage.data.data_dir).glob("*.jpg")) + sorted(
            Path(skimage.data.data_dir).glob("*.png")
        )
    return found


def write_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEG crops of the source photographs, resized to 1024 x 768."""
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in source_photos()]
    out = []
    for i in range(count):
        image = sources[i % len(sources)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((x, y, x + cw, y + ch)).resize(PHOTO_SIZE, Image.BILINEAR)
        path = folder / "photos" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path, quality=90)
        out.append(path)
    return out


def write_fmnist(folder: Path, count: int) -> list[Path]:
    from deeprank.data import export_image_folder, load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    return sorted(export_image_folder(images[:count], labels[:count], folder / "fmnist"))


def build(size: int) -> torch.nn.Module:
    from deeprank.models import MultiScaleNet

    torch.manual_seed(0)
    if size == 224:
        return MultiScaleNet("lite0", trunk_weights="random").eval()
    return MultiScaleNet("small", image_size=size, in_channels=3).eval()


def rate(count: int, fn) -> tuple[float, float]:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    return count / seconds, seconds


def measure(name: str, files: list[Path], size: int, workers: list[int], batch_size: int) -> list[dict]:
    from deeprank.embedding import embed_images, embed_tensor
    from deeprank.embedding.loader import image_batches

    model = build(size)
    embed_images(model, files[:batch_size], batch_size=batch_size, workers=0)  # warm-up (allocations, caches)
    pixels = []
    decode_rate, _ = rate(
        len(files),
        lambda: pixels.extend(b.pixels for b in image_batches(files, size, 3, batch_size=batch_size)),
    )
    batch = torch.cat(pixels)
    model_rate, _ = rate(len(files), lambda: embed_tensor(model, batch, batch_size))
    rows = [
        {"collection": name, "px": size, "mode": "decode only, 1 process", "images_per_s": decode_rate},
        {"collection": name, "px": size, "mode": "model only", "images_per_s": model_rate},
    ]
    reference = None
    for w in workers:
        start = time.perf_counter()
        emb = embed_images(model, files, batch_size=batch_size, workers=w).embeddings
        seconds = time.perf_counter() - start
        r = len(files) / seconds
        if reference is None:
            reference = emb
        rows.append(
            {
                "collection": name,
                "px": size,
                "mode": f"embed, workers={w}" + (" (before: in-process)" if w == 0 else ""),
                "workers": w,
                "images_per_s": r,
                "seconds": seconds,
                "identical_to_workers_0": bool(np.array_equal(emb, reference)),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=256, help="photo files (256)")
    parser.add_argument("--fmnist", type=int, default=4096, help="Fashion-MNIST files (4096)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts (0 1 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", default=str(RESULTS_DIR / "embed.json"))
    args = parser.parse_args()

    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = write_photos(root, args.photos)
        fmnist = write_fmnist(root, args.fmnist)
        for name, files, size in (
            ("fmnist 28px png", fmnist, 64),
            ("photos 1024x768 jpg", photos, 64),
            ("photos 1024x768 jpg", photos, 224),
        ):
            rows += measure(name, files, size, args.workers, args.batch_size)
            print_table(
                [
                    {**r, "images_per_s": f"{r['images_per_s']:.0f}"}
                    for r in rows
                    if r["px"] == size and r["collection"] == name
                ],
                ["collection", "px", "mode", "images_per_s"],
            )
    info["load_average_after"] = list(os.getloadavg())
    path = write_json(args.output, {"machine": info, "batch_size": args.batch_size, "results": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
