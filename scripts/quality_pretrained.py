#!/usr/bin/env python3
"""Measure the pretrained (``lite0``) network against the baselines on real RGB collections; write
docs/pretrained.md and docs/pretrained-results.json (anyone can re-run it).

Collections (Debian packages, nothing downloaded):

* **Noto Color Emoji** (``fonts-noto-color-emoji``): every fully-qualified emoji of ``unicode-data``'s
  ``emoji/emoji-test.txt`` rendered with Pillow (``embedded_color=True`` at the font's bitmap size 109,
  composited on white, padded square), labelled by its Unicode subgroup (about 100 fine-grained
  categories; skin-tone variants are near-duplicates). Split by *base emoji* (skin tones removed), half
  of each subgroup's base emojis for training and half held out, so no variant of a held-out emoji is
  seen in training. Held-out images are the queries and the gallery (query excluded): recall@1, MAP@R,
  similarity precision on sampled labelled triplets.
* **Desktop backgrounds** (``gnome-backgrounds``, ``mate-backgrounds``: photos and artwork; SVGs and
  the re-sized copies of one photo skipped): crop-to-source retrieval, random crops of 35-65% of the
  area as queries against the full images (recall@1/@10), the protocol of ``deeprank evaluate``.

Rows, all in one run: raw pixels, HOG, colour histogram, wavelet, ConvNet features (the pretrained trunk,
no ranking training), the small multiscale network from scratch, the lite0 multiscale network in its three
CPU modes (frozen trunk with cached features, last blocks, full fine-tuning), each trained for the same
``--train-seconds`` on the emoji training half, and instance training (``--unlabelled``) on the
backgrounds for small and lite0 (frozen) for ``--unlabelled-seconds``.

Usage::

    PYTHONPATH=. python scripts/quality_pretrained.py --work /tmp/pretrained-quality

Timings depend on the machine and its load; the script records both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deeprank.data.augment import random_crops  # noqa: E402
from deeprank.embedding.embed import embed_tensor, load_images  # noqa: E402
from deeprank.evaluation import sample_labelled_triplets  # noqa: E402
from deeprank.evaluation.methods import baseline_embedders, evaluate_embeddings  # noqa: E402
from deeprank.evaluation.metrics import crop_retrieval  # noqa: E402
from deeprank.io import write_json_atomic, write_text_atomic  # noqa: E402
from deeprank.models.checkpoint import load_model  # noqa: E402
from deeprank.models.efficientnet_lite import pretrained_trunk  # noqa: E402
from deeprank.training import TrainConfig, train  # noqa: E402
from deeprank.training.loop import Trainer  # noqa: E402

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
BACKGROUNDS = (Path("/usr/share/backgrounds/gnome"), Path("/usr/share/backgrounds/mate"))
SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}
RENDER = 128  # side of the rendered emoji files (the glyphs are 136x128 bitmaps at size 109)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_emoji_test(path: Path) -> list[tuple[str, str]]:
    """``(emoji, subgroup)`` of every fully-qualified line of emoji-test.txt."""
    out, subgroup = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and "; fully-qualified" in line:
            codes = line.split(";", 1)[0].split()
            out.append(("".join(chr(int(c, 16)) for c in codes), subgroup))
    return out


def render_emoji(text: str, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    canvas = Image.new("RGBA", (4 * RENDER, 2 * RENDER), (255, 255, 255, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((RENDER // 2, RENDER // 2), text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB").resize((RENDER, RENDER), Image.Resampling.LANCZOS)


def prepare_emoji(work: Path, seed: int) -> tuple[Path, Path, dict]:
    """Render the emoji into ``work/emoji/{train,test}/<subgroup>/`` (once) and return both folders."""
    root = work / "emoji"
    done = root / "done.json"
    if done.is_file():
        return root / "train", root / "test", json.loads(done.read_text())
    shutil.rmtree(root, ignore_errors=True)
    font = ImageFont.truetype(str(EMOJI_FONT), 109)
    entries = read_emoji_test(EMOJI_TEST)
    by_group: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for text, group in entries:
        base = "".join(ch for ch in text if ch not in SKIN_TONES)
        by_group[group][base].append(text)
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "test": 0, "unrendered": 0, "subgroups": 0}
    for group, bases in sorted(by_group.items()):
        names = sorted(bases)
        if len(names) < 4:  # too few base emojis to split into two halves of at least two
            continue
        counts["subgroups"] += 1
        order = rng.permutation(len(names))
        held = {names[i] for i in order[: len(names) // 2]}
        for base in names:
            split = "test" if base in held else "train"
            folder = root / split / group.replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for text in bases[base]:
                image = render_emoji(text, font)
                if image is None:
                    counts["unrendered"] += 1
                    continue
                name = "-".join(f"{ord(c):x}" for c in text)
                image.save(folder / f"{name}.png")
                counts[split] += 1
    write_json_atomic(done, counts)
    return root / "train", root / "test", counts


def prepare_backgrounds(work: Path, max_side: int = 768) -> tuple[Path, list[str]]:
    """Raster backgrounds, downscaled to ``max_side`` as PNG into one flat folder (once)."""
    root = work / "backgrounds"
    done = root / "done.json"
    if done.is_file():
        return root, json.loads(done.read_text())
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    names = []
    for base in BACKGROUNDS:
        for path in sorted(base.rglob("*")):
            # SVG needs a renderer Pillow lacks; Elephants_WxH are re-sized copies of Elephants.jpg.
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp") or "Elephants_" in path.name:
                continue
            image = Image.open(path).convert("RGB")
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            name = f"{path.parent.name}-{path.stem}.png"
            image.save(root / name)
            names.append(str(path))
    write_json_atomic(done, names)
    return root, names


def labelled(folder: Path) -> tuple[list[Path], np.ndarray]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    paths, labels = [], []
    for c, name in enumerate(classes):
        for f in sorted((folder / name).glob("*.png")):
            paths.append(f)
            labels.append(c)
    return paths, np.asarray(labels)


class Collections:
    """The held-out emoji, the backgrounds and their crops, decoded once per image size."""

    def __init__(
        self, test_dir: Path, bg_dir: Path, crops_per_source: int, seed: int, limit: int | None = None
    ) -> None:
        self.paths, self.labels = labelled(test_dir)
        if limit is not None and limit < len(self.paths):  # an evenly spread subset (smoke runs)
            keep = np.linspace(0, len(self.paths) - 1, limit).astype(int)
            self.paths, self.labels = [self.paths[i] for i in keep], self.labels[keep]
        self.bg_paths = sorted(bg_dir.glob("*.png"))
        self.triplets = sample_labelled_triplets(self.labels, 3000, seed=seed)
        self.crop_sources = np.repeat(np.arange(len(self.bg_paths)), crops_per_source)
        self.seed = seed
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def at(self, size: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if (size, channels) not in self._cache:
            emoji, kept, bad = load_images(self.paths, size, channels)
            assert not bad and len(kept) == len(self.paths), bad[:3]
            bg, kept, bad = load_images(self.bg_paths, size, channels)
            assert not bad, bad[:3]
            crops = random_crops(bg[self.crop_sources], seed=self.seed)
            self._cache[(size, channels)] = (emoji, bg, crops)
        return self._cache[(size, channels)]


def measure(name: str, embed, data: Collections, size: int, extra: dict) -> dict:
    emoji, bg, crops = data.at(size)
    t0 = time.perf_counter()
    emb = embed(emoji)
    rate = len(emoji) / (time.perf_counter() - t0)
    bg_emb, crop_emb = embed(bg), embed(crops)
    row = {"method": name, "image_size": size, "dim": int(emb.shape[1]), "embed_images_per_s": round(rate, 1)}
    metrics = evaluate_embeddings(emb, data.labels, data.triplets, k=30, ks=(1, 10))
    row.update({k: metrics[k] for k in ("recall@1", "mean_average_precision_at_r", "similarity_precision")})
    crop = crop_retrieval(crop_emb, data.crop_sources, bg_emb, ks=(1, 10))
    row.update({f"crop_{k}" if not k.startswith("crop") else k: v for k, v in crop.items()})
    row.update(extra)
    log(
        f"{name}: recall@1 {row['recall@1']:.3f} MAP@R {row['mean_average_precision_at_r']:.3f} "
        f"sim {row['similarity_precision']:.3f} crop@1 {row.get('crop_recall@1', float('nan')):.3f}"
    )
    return row


def train_row(spec: dict, args: argparse.Namespace, data: Collections, train_dir: Path, bg_dir: Path) -> dict:
    out = Path(args.work) / "runs" / spec["name"].replace(" ", "_").replace(",", "").replace("/", "_")
    shutil.rmtree(out, ignore_errors=True)
    unlabelled = spec.get("unlabelled", False)
    config = TrainConfig(
        data=str(bg_dir if unlabelled else train_dir),
        data_kind="unlabelled" if unlabelled else "auto",
        output=str(out),
        preset=spec["preset"],
        image_size=spec["size"],
        time_budget=args.unlabelled_seconds if unlabelled else args.train_seconds,
        batch_size=spec.get("batch_size", 32),
        lr=spec.get("lr", 0.05),
        warmup_steps=10,
        trunk_mode=spec.get("trunk_mode"),
        trunk_blocks=spec.get("trunk_blocks", 2),
        model_options=spec.get("model_options", {}),
        threads=args.threads,
        checkpoint_every=0,
        seed=args.seed,
        device="cpu",
    )
    log(f"training {spec['name']} ({config.time_budget:.0f} s)")
    t0 = time.perf_counter()
    train(config, progress=False)
    wall = time.perf_counter() - t0
    model, info = load_model(out)
    progress = json.loads((out / "config.json").read_text())["progress"]
    extra = {
        "train_s": progress["elapsed_s"],
        "train_wall_s": round(wall, 1),
        "steps": progress["step"],
        "triplets": progress["triplets"],
        "triplets_per_s": round(progress["triplets"] / max(progress["elapsed_s"], 1e-9), 1),
        "settings": {k: v for k, v in spec.items() if k != "name"},
    }
    return measure(spec["name"], lambda x: embed_tensor(model, x), data, spec["size"], extra)


def trunk_rate(size: int, n: int = 64) -> float:
    trunk = pretrained_trunk().eval()
    x = torch.rand(n, 3, size, size)
    with torch.no_grad():
        trunk(x[:8])
        t0 = time.perf_counter()
        for i in range(0, n, 32):
            trunk(x[i : i + 32])
    return round(n / (time.perf_counter() - t0), 1)


def frozen_steady_state(train_dir: Path, args: argparse.Namespace, steps: int = 10) -> dict:
    """Frozen mode once every training image's features are cached: fill time, then triplets/s.

    One view per image (``trunk_views=1``, no shifts) so one pass fills the cache; the main rows use
    the default 4 views, whose cache is still filling at the end of a short budget.
    """
    config = TrainConfig(
        data=str(train_dir),
        output=str(Path(args.work) / "runs" / "steady"),
        preset="lite0",
        image_size=96,
        batch_size=32,
        trunk_mode="frozen",
        trunk_views=1,
        warmup_steps=10,
        threads=args.threads,
        checkpoint_every=0,
        seed=args.seed,
        device="cpu",
    )
    trainer = Trainer(config)
    store, cache = trainer.source.images, trainer.trunk_cache
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(store), 64):
            batch = torch.stack([store.get(i) for i in range(start, min(start + 64, len(store)))])
            trainer.model(batch.float().div_(255.0).contiguous(memory_format=trainer.memory_format))
    fill = time.perf_counter() - t0
    computed = cache.computed
    trainer.step(config.lr)  # first step: allocations
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step(config.lr)
    seconds = time.perf_counter() - t0
    out = {
        "images": len(store),
        "fill_s": round(fill, 1),
        "fill_images_per_s": round(len(store) / fill, 1),
        "steady_triplets_per_s": round(steps * config.batch_size / seconds, 1),
        "trunk_runs_during_steps": cache.computed - computed,
        "cache": cache.stats(),
    }
    log(f"frozen steady state: {out}")
    return out


SPECS = [
    {"name": "small multiscale, from scratch", "preset": "small", "size": 64},
    {"name": "lite0 (a) frozen trunk, cached", "preset": "lite0", "size": 96, "trunk_mode": "frozen"},
    {
        "name": "lite0 (b) last 2 blocks",
        "preset": "lite0",
        "size": 96,
        "trunk_mode": "last-blocks",
        "trunk_blocks": 2,
        "lr": 0.01,
    },
    {"name": "lite0 (c) full fine-tuning", "preset": "lite0", "size": 96, "trunk_mode": "full", "lr": 0.01},
]
UNLABELLED_SPECS = [
    {"name": "small, --unlabelled on backgrounds", "preset": "small", "size": 64, "unlabelled": True},
    {
        "name": "lite0 (a), --unlabelled on backgrounds",
        "preset": "lite0",
        "size": 96,
        "trunk_mode": "frozen",
        "unlabelled": True,
    },
]


def machine() -> dict:
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "commit": commit,
        "load_average": [round(v, 1) for v in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/pretrained-quality")
    ap.add_argument("--json", default=str(ROOT / "docs" / "pretrained-results.json"))
    ap.add_argument("--train-seconds", type=float, default=150.0)
    ap.add_argument("--unlabelled-seconds", type=float, default=60.0)
    ap.add_argument("--crops-per-source", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-held-out", type=int, help="evaluate on this many held-out emoji (smoke runs)")
    ap.add_argument("--only", nargs="*", help="train only the rows whose name starts with one of these")
    ap.add_argument("--steady-only", action="store_true", help="only the frozen steady-state measurement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start)), "machine_start": machine()}
    train_dir, test_dir, counts = prepare_emoji(work, args.seed)
    bg_dir, bg_sources = prepare_backgrounds(work)
    if args.steady_only:  # added to an existing results file
        steady = frozen_steady_state(train_dir, args)
        path = Path(args.json)
        if path.is_file():
            payload = json.loads(path.read_text())
            payload["meta"]["frozen_steady_state"] = {**steady, "machine": machine()}
            write_json_atomic(path, payload)
        return
    data = Collections(test_dir, bg_dir, args.crops_per_source, args.seed, args.max_held_out)
    log(f"emoji {counts}; {len(data.bg_paths)} backgrounds, {len(data.crop_sources)} crops")
    rows = []
    for name, fn in baseline_embedders().items():
        rows.append(measure(name, fn, data, 96, {}))
    specs = SPECS + UNLABELLED_SPECS
    if args.only:
        specs = [s for s in specs if any(s["name"].startswith(o) for o in args.only)]
    for spec in specs:
        rows.append(train_row(spec, args, data, train_dir, bg_dir))
    steady = frozen_steady_state(train_dir, args)
    rates = {f"trunk_images_per_s@{s}": trunk_rate(s) for s in (96, 224)}
    log(f"trunk throughput {rates}")
    meta.update(
        {
            "seconds": round(time.time() - start, 1),
            "machine_end": machine(),
            "emoji": {**counts, "held_out_images": len(data.paths), "triplets": len(data.triplets)},
            "backgrounds": {
                "images": len(data.bg_paths),
                "crops": len(data.crop_sources),
                "sources": bg_sources,
            },
            "budgets": {"train_seconds": args.train_seconds, "unlabelled_seconds": args.unlabelled_seconds},
            "trunk_throughput": rates,
            "frozen_steady_state": steady,
            "command": " ".join(sys.argv),
        }
    )
    write_json_atomic(Path(args.json), {"meta": meta, "results": rows})
    write_text_atomic(Path(args.json).with_suffix(".table.md"), table(rows))
    log(f"wrote {args.json} in {meta['seconds']:.0f} s")


def table(rows: list[dict]) -> str:
    head = (
        "| method | px | recall@1 | MAP@R | sim. precision | crop@1 | crop@10 | train s | triplets/s "
        "| embed img/s |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    lines = [
        f"| {r['method']} | {r['image_size']} | {f(r['recall@1'])} | {f(r['mean_average_precision_at_r'])} "
        f"| {f(r['similarity_precision'])} | {f(r.get('crop_recall@1'))} | {f(r.get('crop_recall@10'))} "
        f"| {f(r.get('train_s'), '{:.0f}')} | {f(r.get('triplets_per_s'), '{:.1f}')} "
        f"| {f(r['embed_images_per_s'], '{:.0f}')} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
