"""The Python API (deeprank.train / embed / evaluate, Index.build / search / save / load): one call each."""

import subprocess
import sys

import numpy as np
import pytest

import deeprank
from deeprank.data import export_image_folder, load_fashion_mnist


def test_import_deeprank_stays_light():
    code = (
        "import sys, deeprank; heavy = [m for m in sys.modules if m.startswith(('deeprank.training', "
        "'deeprank.evaluation', 'pyarrow', 'datasets', 'tensorboard'))]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert {"train", "embed", "evaluate", "Index", "TrainConfig"} <= set(deeprank.__all__)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    images, labels = load_fashion_mnist("test")
    rows = np.concatenate([np.flatnonzero(labels == c)[:8] for c in range(4)])
    export_image_folder(images[rows], labels[rows], root / "images")
    return root


def test_train_embed_index_evaluate(folder, tmp_path):
    run = deeprank.train(
        str(folder / "images"), output=str(tmp_path / "run"), max_steps=4, batch_size=8, device="cpu",
        checkpoint_every=0, val_every=2, val_fraction=0.25, in_channels=1, image_size=28, progress=False,
    )  # fmt: skip
    assert (run / "log.jsonl").is_file() and (run / "best" / "model.safetensors").is_file()

    index = deeprank.embed(run, folder / "images", output=tmp_path / "vectors", device="cpu")
    assert index.embeddings.shape[0] == 32 and (tmp_path / "vectors" / "embeddings.npy").is_file()

    built = deeprank.Index.build(run, folder / "images", progress=False)
    np.testing.assert_allclose(built.embeddings, index.embeddings, atol=1e-6)
    query = built.paths[0]
    assert built.search(query, k=1).ids[0][0] == built.ids[0]
    built.save(tmp_path / "index")
    loaded = deeprank.Index.load(tmp_path / "index")
    assert loaded.search(query, k=3).ids[0] == built.search(query, k=3).ids[0]

    results = deeprank.evaluate(run, folder / "images", tmp_path / "eval", device="cpu", crops=4, k=5)
    row = results["results"][0]
    assert 0 <= row["similarity_precision"] <= 1 and 0 <= row["precision_at_1"] <= 1


def test_train_takes_a_config_or_settings_not_both(tmp_path):
    with pytest.raises(ValueError, match="either config or"):
        deeprank.train(config=deeprank.TrainConfig(), max_steps=1)
