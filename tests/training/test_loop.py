"""The training loop (deeprank.training.loop): Trainer.step, train()'s budget, schedule, cadence, CLI."""

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from deeprank import cli
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import load_config, load_model
from deeprank.training import default_max_shift, loop, train
from deeprank.training.loop import StepStats, Trainer


def test_train_on_bundled_data_writes_a_loadable_checkpoint(small):
    out = train(small(), progress=False)
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "train_state.safetensors"}
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


def test_a_step_is_one_nesterov_sgd_step_on_the_ranking_hinge(small):
    """Trainer.step: the hinge on squared distances (float64 reference), then SGD at the given lr with
    weight decay 2 * lambda and Nesterov momentum."""
    config = small(mining="none", max_shift=0, momentum=0.9, weight_decay_lambda=0.01, margin=1.0)
    trainer = Trainer(config)
    batch = copy.deepcopy(trainer.source).next_batch(config.batch_size)
    reference = copy.deepcopy(trainer.model).double()
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}

    stats = trainer.step(0.04)

    q, p, n = reference(batch.images.double() / 255).chunk(3)
    hinge = 1.0 + (q - p).pow(2).sum(1) - (q - n).pow(2).sum(1)
    loss = hinge.clamp_min(0.0).mean()
    loss.backward()
    active = float((hinge > 0).double().mean())  # the share of triplets with a non-zero hinge
    assert stats == StepStats(
        loss=pytest.approx(loss.item(), rel=1e-5), triplets=8, lr=0.04, active_fraction=active
    )
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.04]
    assert (trainer.counters.step, trainer.counters.triplets) == (1, 8)
    trained = dict(trainer.model.named_parameters())
    got = torch.cat([trained[k].grad.double().flatten() for k in before])
    want = torch.cat([w.grad.flatten() for _, w in reference.named_parameters()])
    # Max-pooling ties (uint8 images have many) route some gradient differently in the float32
    # channels-last path the trainer runs; on inputs without ties the two agree to a few 1e-6.
    assert float((got - want).norm() / want.norm()) < 2e-2
    for name, w in trained.items():
        # first Nesterov step: buffer b = g + 2*lambda*w; update = (g + 2*lambda*w) + momentum * b
        expected = before[name] - 0.04 * (1 + 0.9) * (w.grad + 2 * 0.01 * before[name])
        torch.testing.assert_close(w.detach(), expected, rtol=1e-5, atol=1e-8, msg=name)
    assert any(not torch.equal(trained[k].detach(), before[k]) for k in before)


def test_the_loop_feeds_the_schedule_and_checkpoints_on_its_cadence(small, monkeypatch):
    lrs, saves = [], []
    real_step, real_save = Trainer.step, loop.save_training

    def step(self, lr):
        lrs.append(lr)
        return real_step(self, lr)

    def save(trainer, elapsed, *, finished, rate):
        saves.append((trainer.counters.step, finished))
        return real_save(trainer, elapsed, finished=finished, rate=rate)

    monkeypatch.setattr(Trainer, "step", step)
    monkeypatch.setattr(loop, "save_training", save)
    train(small(max_steps=4, lr=0.1, warmup_steps=2, checkpoint_every=1e-9), progress=False)
    expected = [0.1 * (1 + np.cos(np.pi * k / 4)) / 2 * min(1.0, (k + 1) / 2) for k in range(4)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert saves == [(1, False), (2, False), (3, False), (4, False), (4, True)]
    saves.clear()
    train(small("quiet", max_steps=4, checkpoint_every=0), progress=False)
    assert saves == [(4, True)]  # 0: only at the end


def test_a_diverged_loss_stops_the_run(small, monkeypatch):
    real_step = Trainer.step
    monkeypatch.setattr(
        Trainer, "step", lambda self, lr: StepStats(float("nan"), real_step(self, lr).triplets, lr)
    )
    with pytest.raises(FloatingPointError, match="diverged at step 1"):
        train(small(), progress=False)


def test_same_seed_repeats_and_other_seed_differs(small):
    a = load_file(str(train(small("a", seed=5), progress=False) / "model.safetensors"))
    b = load_file(str(train(small("b", seed=5), progress=False) / "model.safetensors"))
    c = load_file(str(train(small("c", seed=6), progress=False) / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_time_budget_and_epoch_budget(small, image_folder):
    out = train(small("t", max_steps=None, time_budget=1.0), progress=False)
    progress = load_config(out)["progress"]
    assert progress["step"] >= 1 and progress["elapsed_s"] < 30
    root = image_folder(corrupt=False)
    out = train(small("e", data=str(root), max_steps=None, epochs=1, image_size=32), progress=False)
    assert 1.0 <= load_config(out)["progress"]["epoch"] < 2.0  # ends at the first step past one pass


def test_cuda_without_a_gpu_fails_clearly(small):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: nothing to check")
    with pytest.raises(ValueError, match="CUDA"):
        train(small(device="cuda"), progress=False)


def test_default_shift_scales_with_the_image():
    assert [default_max_shift(s) for s in (16, 28, 31, 32, 64, 225)] == [1, 1, 1, 1, 2, 7]


def test_the_train_command_shows_progress_unless_told_not_to(tmp_path, capsys):
    argv = ["train", "--max-steps", "2", "--batch-size", "4", "--device", "cpu", "--checkpoint-every", "0"]
    assert cli.main([*argv, "-o", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert f"checkpoint: {tmp_path / 'a'}" in out and "training: [" in err
    assert cli.main([*argv, "-o", str(tmp_path / "b"), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert f"checkpoint: {tmp_path / 'b'}" in out and "training" not in err
