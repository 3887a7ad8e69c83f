"""Training loop, checkpoints, resume, data sources and CLI glue (short step budgets)."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import config_hash, load_config, load_model, load_train_state, save_checkpoint
from deeprank.training import TrainConfig, default_max_shift, train
from deeprank.training.config import add_train_arguments, config_from_args


def _small(tmp_path, name="run", **kw):
    base = dict(
        output=str(tmp_path / name),
        batch_size=8,
        max_steps=3,
        device="cpu",
        checkpoint_every=0,
        warmup_steps=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_train_on_bundled_data_writes_a_loadable_checkpoint(tmp_path):
    out = train(_small(tmp_path), progress=False)
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "train_state.pt"}
    model, config = load_model(out)
    assert config["progress"]["step"] == 3 and config["progress"]["triplets"] == 24
    assert config["progress"]["finished"] is True and config["data"]["kind"] == "fashion-mnist"
    assert model.in_channels == 1 and model.image_size == 28 and not model.training
    assert config["train"]["weight_decay_lambda"] == 0.001
    emb = model(torch.rand(2, 1, 28, 28))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_training_reduces_the_loss():
    # On a fixed batch of real class triplets, SGD steps with the training loss must lower it.
    from deeprank.data import load_fashion_mnist
    from deeprank.nn import TripletRankingLoss

    torch.manual_seed(0)
    images, labels = load_fashion_mnist("test")
    q = np.arange(16)
    p = np.array([np.flatnonzero(labels == labels[i])[5] for i in q])
    n = np.array([np.flatnonzero(labels != labels[i])[5] for i in q])
    x = torch.from_numpy(images[np.concatenate([q, p, n])][:, None]).float() / 255
    model = MultiScaleNet("small", in_channels=1, dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    loss_fn = TripletRankingLoss(margin=1.0)
    first = float(loss_fn(model(x)).detach())
    # From a fresh start the embeddings sit close together (loss near the margin) and move slowly at
    # first: 20 steps at lr 0.05 take this batch from about 0.99 to about 0.25.
    for _ in range(20):
        loss = loss_fn(model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss_fn(model(x)).detach()) < first - 0.1


def test_same_seed_repeats_and_other_seed_differs(tmp_path):
    a = load_file(str(train(_small(tmp_path, "a", seed=5), progress=False) / "model.safetensors"))
    b = load_file(str(train(_small(tmp_path, "b", seed=5), progress=False) / "model.safetensors"))
    c = load_file(str(train(_small(tmp_path, "c", seed=6), progress=False) / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("mining", ["semi-hard", "auto"])  # auto = batch-all, which draws randomly
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, mining):
    full = train(_small(tmp_path, "full", max_steps=6, mining=mining), progress=False)
    # interrupted at step 3 of 6 (the schedule still spans 6 steps)
    part = train(_small(tmp_path, "part", max_steps=6, stop_at_step=3, mining=mining), progress=False)
    state = load_train_state(part)
    assert state["step"] == 3 and "optimizer" in state and "source" in state
    assert load_config(part)["progress"]["finished"] is False
    resumed = train(_small(tmp_path, "part", max_steps=6, resume=True, mining=mining), progress=False)
    assert load_config(resumed)["progress"]["step"] == 6
    a = load_file(str(full / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    sa, sb = load_train_state(full), load_train_state(resumed)
    assert sa["triplets"] == sb["triplets"] == 48
    assert torch.equal(sa["torch_rng"], sb["torch_rng"])


def test_resume_without_state_fails_clearly(tmp_path):
    model = MultiScaleNet("small", in_channels=1)
    save_checkpoint(tmp_path / "ck", model, {})
    with pytest.raises(ValueError, match="training state"):
        train(_small(tmp_path, "ck", resume=True), progress=False)


def _folder(tmp_path, corrupt=True):
    rng = np.random.default_rng(0)
    for c, tint in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        (tmp_path / "f" / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(6):
            pixels = np.asarray(tint) * 0.7 + rng.integers(0, 60, (20, 24, 3))
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "f" / f"c{c}" / f"{i}.png")
    if corrupt:
        (tmp_path / "f" / "c0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return tmp_path / "f"


def test_image_folder_training_skips_corrupt_images(tmp_path):
    root = _folder(tmp_path)
    config = _small(tmp_path, data=str(root), image_size=32, max_steps=8, batch_size=6, buffer_capacity=50)
    with pytest.warns(RuntimeWarning, match="broken.png"):
        out = train(config, progress=False)
    model, saved = load_model(out)
    assert model.in_channels == 3 and model.image_size == 32
    assert saved["progress"]["skipped"] == 1 and saved["data"]["classes"] == ["c0", "c1", "c2"]


def test_triplet_csv_and_unlabelled_training(tmp_path):
    root = _folder(tmp_path, corrupt=False)
    csv = tmp_path / "t.csv"
    csv.write_text(
        "query,positive,negative\n"
        + "\n".join(
            f"f/c{c}/{i}.png,f/c{c}/{(i + 1) % 6}.png,f/c{(c + 1) % 3}/{i}.png"
            for c in range(3)
            for i in range(6)
        )
    )
    out = train(_small(tmp_path, "csv", data=str(csv), image_size=32, batch_size=4), progress=False)
    assert load_config(out)["data"]["kind"] == "triplets"
    out = train(
        _small(
            tmp_path,
            "inst",
            data=str(root / "c1"),
            data_kind="unlabelled",
            image_size=32,
            batch_size=4,
            mining="semi-hard",
        ),
        progress=False,
    )
    assert load_config(out)["data"] == {"kind": "unlabelled", "path": str(root / "c1"), "images": 6}


def test_time_budget_and_epoch_budget(tmp_path):
    out = train(_small(tmp_path, "t", max_steps=None, time_budget=1.0), progress=False)
    progress = load_config(out)["progress"]
    assert progress["step"] >= 1 and progress["elapsed_s"] < 30
    root = _folder(tmp_path, corrupt=False)
    out = train(
        _small(tmp_path, "e", data=str(root), max_steps=None, epochs=1, image_size=32), progress=False
    )
    assert 1.0 <= load_config(out)["progress"]["epoch"] < 2.0  # ends at the first step past one pass


def test_bad_config_values_raise(tmp_path):
    for bad in (
        dict(batch_size=0),
        dict(lr=0),
        dict(schedule="step"),
        dict(mining="hardest"),
        dict(max_steps=-1),
        dict(data_kind="video"),
    ):
        with pytest.raises(ValueError):
            train(_small(tmp_path, **bad), progress=False)
    for shift in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_shift must be an int >= 0 or None"):
            train(_small(tmp_path, max_shift=shift), progress=False)

    with pytest.raises(ValueError, match="CUDA"):
        if torch.cuda.is_available():
            raise ValueError("CUDA present: nothing to check")
        train(_small(tmp_path, device="cuda"), progress=False)


def test_default_shift_scales_with_the_image():
    assert [default_max_shift(s) for s in (16, 28, 31, 32, 64, 225)] == [1, 1, 1, 1, 2, 7]


def test_cli_arguments_map_to_config():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(
        [
            "imgs/",
            "--max-steps",
            "7",
            "--lambda",
            "0.01",
            "--out-of-class",
            "0.3",
            "--device",
            "cpu",
            "--resume",
            "--single-scale",
            "--mining",
            "semi-hard",
        ]
    )
    config = config_from_args(args)
    assert config.data == "imgs/" and config.max_steps == 7 and config.weight_decay_lambda == 0.01
    assert config.out_of_class_fraction == 0.3 and config.resume and config.single_scale
    assert config.mining == "semi-hard" and config.device == "cpu"
    default = config_from_args(parser.parse_args([]))
    assert default.data is None and default.preset == "small"


def test_checkpoint_hash_files_and_corruption(tmp_path):
    model = MultiScaleNet("small", in_channels=1)
    out = save_checkpoint(tmp_path / "ck", model, {"train": {"lr": 0.1}}, {"step": 1})
    config = json.loads((out / "config.json").read_text())
    assert config["model_hash"] == config_hash(model.config) == config_hash(config)
    assert config_hash({"model": model.config, "train": {"lr": 9}}) == config_hash(model.config)
    other = MultiScaleNet("small", in_channels=1, embedding_dim=32)
    assert config_hash(other.config) != config_hash(model.config)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporaries left
    loaded, _ = load_model(out)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="safetensors"):
        load_model(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_model(out)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing")


def test_training_with_a_relevance_table_and_with_golden_features(tmp_path):
    root = _folder(tmp_path, corrupt=False)
    table = tmp_path / "scores.csv"
    rows = [
        f"c{c}/{i}.png,c{c}/{j}.png,{1.0 / (1 + abs(i - j))}"
        for c in range(3)
        for i in range(6)
        for j in range(i)
    ]
    table.write_text("image_a,image_b,score\n" + "\n".join(rows) + "\n")
    out = train(
        _small(tmp_path, "table", data=str(root), relevance=str(table), image_size=32, batch_size=4),
        progress=False,
    )
    assert load_config(out)["train"]["relevance"] == str(table)
    out = train(
        _small(tmp_path, "golden", data=str(root), relevance="golden", image_size=32, batch_size=4),
        progress=False,
    )
    assert load_config(out)["progress"]["step"] == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("c0/0.png,elsewhere/x.png,1.0\n")
    with pytest.raises(ValueError, match="not in"):
        train(_small(tmp_path, "bad", data=str(root), relevance=str(bad), image_size=32), progress=False)
