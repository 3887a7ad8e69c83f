"""Periodic validation (deeprank.training.validation): held-out split, metrics, best checkpoint."""

import json

import numpy as np
import pytest

from deeprank.models.checkpoint import load_config, load_model
from deeprank.training import TrainConfig, train
from deeprank.training.config import check_config
from deeprank.training.logbook import read_log
from deeprank.training.loop import Trainer
from deeprank.training.sources import held_out_split
from deeprank.training.validation import Validator


def _reference_precision_at_1(emb: np.ndarray, labels: np.ndarray) -> float:
    """Brute force in float64: does each image's nearest other image share its label?"""
    e = emb.astype(np.float64)
    d = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float(np.mean(labels[d.argmin(1)] == labels))


def test_held_out_split_is_disjoint_seeded_and_complete():
    train_rows, held = held_out_split(100, 0.1, seed=3)
    assert len(held) == 10 and not set(train_rows) & set(held)
    assert sorted([*train_rows, *held]) == list(range(100))
    assert np.array_equal(held, held_out_split(100, 0.1, seed=3)[1])
    assert not np.array_equal(held, held_out_split(100, 0.1, seed=4)[1])
    with pytest.raises(ValueError, match="fewer than 2"):
        held_out_split(3, 0.5, seed=0)


def test_held_out_images_are_not_trained_on(small):
    trainer = Trainer(small(val_fraction=0.1, val_every=1))
    assert trainer.source.size == 9000 and len(trainer.source.held_out.labels) == 1000
    assert trainer.source.describe()["held_out"] == 1000


def test_validation_metrics_match_a_brute_force_reference(small):
    trainer = Trainer(small(val_fraction=0.05, val_every=1))
    validator = Validator(trainer)
    values = validator.measure(trainer.model)
    from deeprank.embedding import embed_tensor

    emb = embed_tensor(trainer.model, validator.data.images)
    labels = validator.data.labels
    assert values["precision_at_1"] == pytest.approx(_reference_precision_at_1(emb, labels))
    t = validator.data.triplets
    e = emb.astype(np.float64)
    correct = ((e[t[:, 0]] - e[t[:, 1]]) ** 2).sum(1) < ((e[t[:, 0]] - e[t[:, 2]]) ** 2).sum(1)
    assert values["similarity_precision"] == pytest.approx(correct.mean())
    assert trainer.model.training  # measured in eval mode, put back


def test_val_every_logs_and_keeps_the_best_checkpoint(small):
    out = train(small(max_steps=4, val_every=2, val_fraction=0.05), progress=False)
    val = [r for r in read_log(out) if r["event"] == "val"]
    assert [r["step"] for r in val] == [2, 4] and val[0]["best"] is True
    assert all(0 <= r["precision_at_1"] <= 1 and 0 <= r["similarity_precision"] <= 1 for r in val)
    best_step = max(val, key=lambda r: r["precision_at_1"])["step"]  # ties keep the first
    info = load_config(out / "best")
    assert info["validation"]["step"] == best_step
    model, _ = load_model(out / "best")
    assert model.embedding_dim == load_model(out)[0].embedding_dim
    assert {p.name for p in (out / "best").iterdir()} == {
        "config.json",
        "model.safetensors",
    }  # a model to use, not a run to resume


def test_val_data_from_another_folder(small, image_folder):
    root = image_folder(corrupt=True)
    with pytest.warns(RuntimeWarning, match="broken.png"):
        out = train(small(data=str(root), val=str(root), val_every=3, image_size=16), progress=False)
    (record,) = [r for r in read_log(out) if r["event"] == "val"]
    assert record["images"] == 18  # the broken file skipped, as in training


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"val_every": 5}, "val_every needs validation data"),
        ({"val_every": 0, "val_fraction": 0.1}, "val_every must be"),
        ({"val_fraction": 1.0}, "val_fraction must be"),
        ({"val_fraction": 0.1, "val": "x"}, "not both"),
    ],
)
def test_bad_validation_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        check_config(TrainConfig(**settings))


def test_val_fraction_needs_labelled_data(small, image_folder):
    root = image_folder(corrupt=False)
    with pytest.raises(ValueError, match="needs labelled images"):
        Trainer(small(data=str(root / "c0"), data_kind="unlabelled", val_fraction=0.2))


def test_a_resumed_run_beats_the_best_model_kept_not_only_the_log(small):
    out = train(small(max_steps=6, stop_at_step=2, val_every=2, val_fraction=0.05), progress=False)
    # As if the first session had validated once more after its checkpoint and kept a better model.
    info = json.loads((out / "best" / "config.json").read_text())
    info["validation"]["precision_at_1"] = 1.0
    (out / "best" / "config.json").write_text(json.dumps(info))
    # ... and the log's own best is the lowest score, so any later validation would beat it alone.
    lines = [{**r, "precision_at_1": 0.0} if r["event"] == "val" else r for r in read_log(out)]
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    train(small(max_steps=6, resume=True, val_every=2, val_fraction=0.05), progress=False)
    val = [r for r in read_log(out) if r["event"] == "val"]
    assert [r["step"] for r in val] == [2, 4, 6] and not any(r["best"] for r in val[1:])
    assert json.loads((out / "best" / "config.json").read_text())["validation"]["precision_at_1"] == 1.0
