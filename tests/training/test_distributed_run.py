"""``deeprank train`` as 2 real gloo ranks on 127.0.0.1: under torchrun, resumed, and with a rank killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from ranks import free_port, launch, train_ranks

from deeprank.index import Index
from deeprank.models.checkpoint import STATE_FILE, load_model

# Small and fast: 28 px, batch 4, one CPU thread per rank (this machine has two cores).
QUICK = ["--batch-size", "4", "--device", "cpu", "--warmup-steps", "2", "--no-progress"]


def _progress(out) -> dict:
    return json.loads((out / "config.json").read_text())["progress"]


def test_torchrun_trains_one_model_that_loads_and_indexes(image_folder, tmp_path):
    folder, out = image_folder(), tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    command += ["-m", "deeprank", "train", str(folder), "-o", str(out), "--max-steps", "3"]
    command += ["--checkpoint-every", "0", *QUICK]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "log.jsonl", "model.safetensors", "rank-0.json", "rank-1.json", STATE_FILE]
    )
    progress = _progress(out)
    assert (progress["step"], progress["triplets"], progress["finished"]) == (3, 3 * 2 * 4, True)
    model, config = load_model(out)
    assert config["data"]["kind"] == "folder" and not model.training
    index = Index.build(out, folder, progress=False, workers=0)
    assert len(index) == 18  # the broken file is skipped
    result = index.search(str(folder / "c1" / "0.png"), k=3)
    assert result.ids[0][0] == "c1/0.png" and len(result.ids[0]) == 3


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A 6-step 2-rank run in one go (the reference of the resume tests)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train_ranks(["-o", str(out), *SIX])
    return out


SIX = ["--max-steps", "6", "--checkpoint-every", "0", *QUICK]


def test_resume_on_the_same_world_size_continues_bit_exactly(straight, tmp_path):
    split = tmp_path / "split"
    train_ranks(["-o", str(split), "--stop-at-step", "3", *SIX])
    assert _progress(split)["step"] == 3
    train_ranks(["-o", str(split), "--resume", *SIX])
    assert _progress(split)["step"] == 6
    assert (split / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()
    for r in range(2):
        a = json.loads((straight / f"rank-{r}.json").read_text())
        b = json.loads((split / f"rank-{r}.json").read_text())
        assert a == b, f"rank {r}'s sampler and random states differ"


def test_resume_on_another_world_size_restores_the_weights_and_warns(straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "deeprank", "train", "-o", str(out), "--resume", "--max-steps", "7"]
    done = subprocess.run(
        [*command, "--checkpoint-every", "0", *QUICK], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "saved by 2 process(es)) with 1" in done.stderr and "sampling restarts" in done.stderr
    assert _progress(out)["step"] == 7
    assert (out / "model.safetensors").read_bytes() != (straight / "model.safetensors").read_bytes()


def test_a_killed_rank_stops_the_other_within_the_timeout_and_the_checkpoint_resumes(tmp_path):
    out, timeout = tmp_path / "run", 20
    args = ["-m", "deeprank", "train", "-o", str(out), "--time-budget", "300", "--checkpoint-every", "0.5"]
    procs = launch([*args, *QUICK], env={"DEEPRANK_DIST_TIMEOUT": str(timeout)})
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.json").is_file() or _progress(out)["step"] < 2:
            assert all(p.poll() is None for p in procs), "a rank ended before the kill"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = procs[0].communicate(timeout=timeout + 10)
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert procs[0].returncode != 0
    assert waited < timeout, f"rank 0 took {waited:.1f} s to give up"
    lines = [line for line in stderr.splitlines() if line.startswith("deeprank: error:")]
    assert len(lines) == 1 and "lost contact with the other ranks" in lines[0], stderr[-2000:]
    assert "Traceback" not in stderr
    model, _ = load_model(out)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 64)
    step = _progress(out)["step"]
    train_ranks(["-o", str(out), "--resume", "--max-steps", str(step + 2), "--checkpoint-every", "0", *QUICK])
    assert _progress(out)["step"] == step + 2
