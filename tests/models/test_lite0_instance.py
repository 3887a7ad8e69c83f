"""Instance search with the pretrained network: ``deeprank train --unlabelled --preset lite0`` on a few of
scikit-image's photos, then ``deeprank evaluate``'s crop-to-source retrieval, through the real CLI."""

import json
import shutil

import pytest
import torch

from deeprank import cli
from deeprank.models.checkpoint import load_model
from deeprank.models.efficientnet_lite import pretrained_trunk

# 12 photos: evaluate's crop-to-source reports recall@10, which needs more than 10 references.
PHOTOS = [
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png", "brick.png", "horse.png", "moon.png",
]  # fmt: skip


@pytest.fixture
def photos(sample_photos, lite0_state, tmp_path):
    """The photos flat (for --unlabelled) and in two arbitrary categories (evaluate needs labels)."""
    names = [n for n in PHOTOS if (sample_photos / n).is_file()]
    assert len(names) == len(PHOTOS), f"scikit-image lacks {set(PHOTOS) - set(names)}"
    flat, labelled = tmp_path / "photos", tmp_path / "labelled"
    flat.mkdir()
    for i, name in enumerate(names):
        shutil.copy(sample_photos / name, flat / name)
        (labelled / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_photos / name, labelled / f"c{i % 2}" / name)
    return flat, labelled


def test_unlabelled_training_with_lite0_and_crop_to_source(photos, tmp_path, capsys):
    flat, labelled = photos
    run = tmp_path / "run"
    code = cli.main(
        ["train", str(flat), "--unlabelled", "--preset", "lite0", "--image-size", "96", "--max-steps", "3"]
        + ["--batch-size", "4", "--warmup-steps", "1", "-o", str(run), "--checkpoint-every", "0"]
        + ["--device", "cpu", "--no-progress"]
    )
    assert code == 0, capsys.readouterr().err
    model, config = load_model(run)
    assert model.config["preset"] == "lite0" and config["train"]["data_kind"] == "unlabelled"
    # The default mode for a trunk is frozen: the trained model still holds ImageNet's trunk exactly.
    for key, value in pretrained_trunk().state_dict().items():
        assert torch.equal(model.convnet.state_dict()[key], value), key

    code = cli.main(
        [
            "evaluate",
            "-m",
            str(run),
            str(labelled),
            "-o",
            str(tmp_path / "ev"),
            "--crops",
            "12",
            "-k",
            "5",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = {r["method"]: r for r in json.loads((tmp_path / "ev" / "results.json").read_text())["results"]}
    # Every photo is cropped once (35-65% of its area) and looked up among all of them: the
    # pretrained trunk's features find most sources after three steps.
    assert rows["model"]["crop_recall@1"] >= 0.75, rows["model"]
