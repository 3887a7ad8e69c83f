"""RUN/log.jsonl (deeprank.training.logbook): every step logged, appended on resume without repeats."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from deeprank import cli
from deeprank.training import train
from deeprank.training.logbook import Logbook, active_fraction, read_log


def test_active_fraction_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3 * 50, 8))
    q, p, n = emb[:50], emb[50:100], emb[100:]
    margin = 0.5
    expected = np.mean(margin + ((q - p) ** 2).sum(1) - ((q - n) ** 2).sum(1) > 0)
    assert 0 < expected < 1  # a case that can tell a wrong sign or a wrong split
    assert active_fraction(torch.from_numpy(emb).float(), margin) == pytest.approx(expected)


def test_every_step_is_one_json_line(small):
    out = train(small(max_steps=4), progress=False)
    records = read_log(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and {r["event"] for r in records} == {"train"}
    for r in records:
        assert r["loss"] > 0 and r["lr"] > 0 and r["triplets"] == 8 * r["step"]
        assert 0 <= r["active_fraction"] <= 1 and r["triplets_per_s"] >= 0
    assert len({r["lr"] for r in records}) > 1  # the schedule's rate of each step, not one value


def test_resume_appends_without_repeating_steps(small):
    # A session killed between checkpoints leaves steps after its checkpoint in the log (and maybe a
    # torn line); the first session here checkpoints at step 2, then such lines are added.
    config = small(max_steps=5, stop_at_step=2)
    out = train(config, progress=False)
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps({"event": "train", "step": 3, "loss": 9.0}) + "\n")
        f.write('{"event": "train", "st')  # a torn last line
    train(small(max_steps=5, resume=True), progress=False)
    steps = [r["step"] for r in read_log(out)]
    assert steps == [1, 2, 3, 4, 5]
    assert all(r["loss"] != 9.0 for r in read_log(out))  # the unsaved session's step 3 was dropped


def test_a_fresh_run_replaces_an_old_log(small):
    train(small(max_steps=3), progress=False)
    out = train(small(max_steps=2, overwrite=True), progress=False)
    assert [r["step"] for r in read_log(out)] == [1, 2]


def test_logbook_writes_whole_lines_and_reads_back(tmp_path):
    with Logbook(tmp_path / "run") as log:
        log.write("train", 1, {"loss": 0.5, "lr": float("nan")})
        log.write("val", 1, {"precision_at_1": 0.25, "best": True})
    text = (tmp_path / "run" / "log.jsonl").read_text()
    assert text.count("\n") == 2 and "NaN" not in text
    assert read_log(tmp_path / "run")[0] == {"event": "train", "step": 1, "loss": 0.5, "lr": None}
    again = Logbook(tmp_path / "run", start_step=1)
    assert again.best("precision_at_1") == 0.25
    again.close()
    with pytest.raises(ValueError, match="closed"):
        again.write("train", 2, {})


def test_tensorboard_writes_event_files(small):
    pytest.importorskip("tensorboard")
    out = train(small(tensorboard=True), progress=False)
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]


def test_cli_train_prints_where_the_log_is(capsys, tmp_path):
    code = cli.main(
        ["train", "-o", str(tmp_path / "r"), "--max-steps", "2", "--batch-size", "4", "--device", "cpu",
         "--no-progress", "--checkpoint-every", "0"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and f"log: {tmp_path / 'r' / 'log.jsonl'}" in out
    assert len(read_log(tmp_path / "r")) == 2


def test_without_tensorboard_the_error_names_the_extra(tmp_path):
    # A fresh interpreter where the package cannot be imported (as where it is not installed).
    code = (
        "import sys; sys.modules['tensorboard'] = None\n"
        "from deeprank import cli\n"
        f"sys.exit(cli.main(['train', '-o', {str(tmp_path / 'r')!r}, '--max-steps', '1', '--batch-size', '4',"
        " '--device', 'cpu', '--no-progress', '--tensorboard']))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "pip install 'deeprank[tensorboard]'" in err[0]


def test_a_run_killed_before_its_first_checkpoint_may_start_again(small):
    out = train(small(max_steps=2), progress=False)
    for name in ("config.json", "model.safetensors"):
        (out / name).unlink()
    for state in out.glob("train_state*"):
        state.unlink()
    assert [p.name for p in out.iterdir()] == ["log.jsonl"]  # only what the run wrote before saving
    train(small(max_steps=2), progress=False)  # not refused as "not empty"
    assert [r["step"] for r in read_log(out)] == [1, 2]
