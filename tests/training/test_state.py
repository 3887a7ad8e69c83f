"""Training state and resume (deeprank.training.state): exact continuation and the merge rule."""

import copy
import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file

from deeprank.errors import DeeprankError
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import STATE_FILE, load_config, load_train_state, save_checkpoint
from deeprank.training import TrainConfig, train
from deeprank.training.loop import Trainer
from deeprank.training.state import (
    CALLER_FIELDS,
    Counters,
    capture_state,
    restore_state,
    resume_point,
    resumed_config,
)


@pytest.mark.parametrize("mining", ["semi-hard", "auto"])  # auto = batch-all, which draws randomly
def test_resumed_run_equals_an_uninterrupted_one(small, mining):
    full = train(small("full", max_steps=6, mining=mining), progress=False)
    # interrupted at step 3 of 6 (the schedule still spans 6 steps)
    part = train(small("part", max_steps=6, stop_at_step=3, mining=mining), progress=False)
    state = load_train_state(part)
    assert state["step"] == 3 and "optimizer" in state and "source" in state
    assert load_config(part)["progress"]["finished"] is False
    resumed = train(small("part", max_steps=6, resume=True, mining=mining), progress=False)
    assert load_config(resumed)["progress"]["step"] == 6
    a = load_file(str(full / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    sa, sb = load_train_state(full), load_train_state(resumed)
    assert sa["triplets"] == sb["triplets"] == 48
    assert torch.equal(sa["torch_rng"], sb["torch_rng"])


def test_resume_without_state_fails_clearly(tmp_path, small):
    model = MultiScaleNet("small", in_channels=1)
    save_checkpoint(tmp_path / "ck", model, {})
    with pytest.raises(ValueError, match="training state"):
        train(small("ck", resume=True), progress=False)


def test_the_saved_config_wins_but_for_the_callers_fields():
    saved = TrainConfig(lr=0.2, margin=0.5, max_steps=3, output="old", device="cuda", seed=4).to_dict()
    saved["workers"] = 0  # a setting of an older deeprank: dropped
    del saved["max_tries"]  # a setting newer than the checkpoint: its default
    caller = TrainConfig(lr=0.9, max_steps=6, output="new", device="cpu", threads=2, checkpoint_every=5.0)
    merged = resumed_config(saved, caller)
    assert (merged.lr, merged.margin, merged.seed, merged.max_tries) == (0.2, 0.5, 4, 32)
    assert (merged.max_steps, merged.output, merged.device, merged.threads) == (6, "new", "cpu", 2)
    assert merged.checkpoint_every == 5.0
    assert all(getattr(merged, name) == getattr(caller, name) for name in CALLER_FIELDS)
    budget = {"epochs", "max_steps", "max_triplets", "time_budget", "stop_at_step"}
    callers = {"output", "device", "threads", "checkpoint_every", "resume", "overwrite"}
    assert set(CALLER_FIELDS) == budget | callers


def test_a_resumed_run_keeps_its_settings_and_takes_a_longer_budget(small):
    first = train(small("run", max_steps=3), progress=False)
    assert load_config(first)["progress"]["finished"] is True
    out = train(small("run", max_steps=5, lr=0.5, resume=True), progress=False)
    saved = load_config(out)
    assert saved["progress"]["step"] == 5 and saved["progress"]["triplets"] == 40
    assert saved["train"]["lr"] == 0.05 and saved["train"]["max_steps"] == 5


def test_resume_point_loads_the_checkpoint_model_or_nothing(small):
    assert resume_point(small("none", resume=True)) is None  # nothing to resume: a fresh run
    out = train(small("run"), progress=False)
    with pytest.raises(DeeprankError, match="not empty"):  # resume not asked: a fresh run is refused
        resume_point(small("run"))
    assert resume_point(small("run", resume=True)) is not None
    assert resume_point(small("run", overwrite=True)) is None  # a fresh run, as asked
    assert not (out / STATE_FILE).exists() and (out / "model.safetensors").is_file()  # old state gone
    with pytest.raises(ValueError, match="no training state"):  # so resume cannot continue the old run
        resume_point(small("run", resume=True))
    out = train(small("run", overwrite=True), progress=False)
    point = resume_point(small("run", resume=True, max_steps=9))
    assert point.config.max_steps == 9 and point.state["step"] == 3
    assert not point.model.training
    saved = load_file(str(out / "model.safetensors"))
    for key, value in point.model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_a_restored_trainer_takes_the_same_next_step(small):
    config = small(mining="auto", max_shift=2)
    first = Trainer(config)
    for lr in (0.01, 0.02):
        first.step(lr)
    state = copy.deepcopy(capture_state(first, elapsed=1.5))
    weights = copy.deepcopy(first.model.state_dict())
    expected = first.step(0.03)

    second = Trainer(dataclasses.replace(config, seed=9))  # the state, not the seed, decides
    second.model.load_state_dict(weights)  # weights travel in model.safetensors, not in the state
    restore_state(second, state)
    assert second.counters == Counters(2, 16, 1.5, state["loss_avg"])
    got = second.step(0.03)
    assert got == expected
    for key, value in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[key], value), key


def test_counters_average_the_loss():
    c = Counters()
    assert math.isnan(c.loss_avg)
    c.record(8, 2.0)
    assert (c.step, c.triplets, c.loss_avg) == (1, 8, 2.0)
    c.record(4, 1.0)
    assert (c.step, c.triplets) == (2, 12) and c.loss_avg == pytest.approx(0.98 * 2.0 + 0.02 * 1.0)
