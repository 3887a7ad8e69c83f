"""Crash consistency of checkpoints and training state: a kill at every rename/fsync of a save.

Whatever the kill leaves, what is on disk loads, each file whole and from the save before or the save
being written, and ``resume`` then ends exactly where an uninterrupted run ends.
"""

import shutil

import pytest
import torch
from crash import every_kill
from safetensors.torch import load_file

from deeprank.models.checkpoint import STATE_FILE, load_config, load_model, load_train_state
from deeprank.training import train


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def runs(small):
    """``(config, full)``: the settings of a 6-step run (threads 1, so a fork is safe) and its weights."""

    def config(name, **kw):
        return small(name, max_steps=6, threads=1, **kw)

    full = weights(train(config("full"), progress=False))
    return config, full


def check_resume_ends_like_the_full_run(config, folder, full, scratch):
    """Resume a copy of ``folder`` to step 6: the weights must be the uninterrupted run's."""
    shutil.rmtree(scratch, ignore_errors=True)
    if folder.exists():
        shutil.copytree(folder, scratch)
    done = train(config(scratch.name, resume=True), progress=False)
    assert same(weights(done), full)


def test_a_kill_during_a_checkpoint_over_an_earlier_one(runs, tmp_path):
    config, full = runs
    train(config("before", stop_at_step=3), progress=False)  # the checkpoint on disk: step 3
    pristine = tmp_path / "before"
    after = tmp_path / "after"
    shutil.copytree(pristine, after)
    train(config("after", stop_at_step=5, resume=True), progress=False)  # what the save writes: step 5
    saved = {3: weights(pristine), 5: weights(after)}
    target = tmp_path / "ck"
    shutil.copytree(pristine, target)
    seen = set()

    def write():  # in the forked child: resume from step 3 and save at step 5
        train(config("ck", stop_at_step=5, resume=True), progress=False)

    def check(step):
        step_of_config = load_config(target)["progress"]["step"]
        model, _ = load_model(target)
        on_disk = {k: v for k, v in model.state_dict().items()}
        assert any(same(on_disk, w) for w in saved.values()), f"kill {step}: weights of neither save"
        state = load_train_state(target)
        assert state["step"] in saved and same(state["weights"], saved[state["step"]]), f"kill {step}"
        assert step_of_config in saved
        seen.add((state["step"], step_of_config))
        check_resume_ends_like_the_full_run(config, target, full, tmp_path / "resumed")
        shutil.rmtree(target)
        shutil.copytree(pristine, target)
        assert not any(p.name.endswith(".tmp") for p in target.iterdir())

    steps = every_kill(write, check)
    assert steps >= 9  # three files, each: fsync, rename, fsync of the folder
    # some kill left files of both saves side by side, and resume still ended where it should
    assert {(3, 3), (5, 3), (5, 5)} <= seen


def test_a_kill_during_the_first_checkpoint(runs, tmp_path):
    config, full = runs
    target = tmp_path / "ck"
    outcomes = set()

    def write():
        train(config("ck", stop_at_step=3), progress=False)

    def check(step):
        files = target.iterdir() if target.exists() else []
        # The step log (deeprank.training.logbook) is written from the first step, beside the checkpoint.
        names = {p.name for p in files if not p.name.endswith(".tmp") and p.name != "log.jsonl"}
        if STATE_FILE in names:
            assert load_train_state(target)["step"] == 3
        if "config.json" in names:
            load_model(target)
        outcomes.add(frozenset(names))
        check_resume_ends_like_the_full_run(config, target, full, tmp_path / "resumed")  # or a fresh start
        shutil.rmtree(target, ignore_errors=True)

    assert every_kill(write, check) >= 9
    assert frozenset({"model.safetensors", STATE_FILE}) in outcomes  # config.json not yet written
