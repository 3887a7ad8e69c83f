"""``deeprank train``: what it refuses, each as one line on stderr and exit 2 (no traceback)."""

import os
import pickle
import subprocess
import sys

import pytest
import torch
from PIL import Image

from deeprank import cli

SMALL = ["--max-steps", "2", "--batch-size", "8", "--device", "cpu", "--no-progress", "--warmup-steps", "1"]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deeprank: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err


@pytest.fixture
def trained(tmp_path, capsys):
    """A finished 2-step run in ``tmp_path / "run"``."""
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "-o", out, *SMALL)
    assert code == 0, err
    return out


class Payload:
    """Unpickling this opens (creates) ``marker``: the code a hostile state file would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_non_empty_output_folder_is_refused_unless_resume_or_overwrite(capsys, trained):
    before = (trained / "model.safetensors").read_bytes()
    code, _, err = run(capsys, "train", "-o", trained, *SMALL, "--seed", "5")
    assert_one_line_error(code, err, str(trained), "--resume", "--overwrite")
    assert (trained / "model.safetensors").read_bytes() == before  # untouched
    code, _, err = run(capsys, "train", "-o", trained, *SMALL, "--seed", "5", "--overwrite")
    assert code == 0, err
    assert (trained / "model.safetensors").read_bytes() != before
    code, _, err = run(capsys, "train", "-o", trained, *SMALL[2:], "--max-steps", "3", "--resume")
    assert code == 0, err


def test_any_file_in_the_output_folder_counts(capsys, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "train", "-o", tmp_path / "out", *SMALL)
    assert_one_line_error(code, err, "not empty")
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "train", "-o", tmp_path / "file", *SMALL)
    assert_one_line_error(code, err, "is a file")


@pytest.mark.parametrize("name", ["train_state.pt", "train_state.safetensors"])
def test_a_pickled_state_never_runs_on_resume(capsys, trained, tmp_path, name):
    marker = tmp_path / "pwned"
    torch.save({"step": Payload(marker)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)  # the payload is live: unpickling runs it
    assert marker.exists()
    marker.unlink()

    (trained / "train_state.safetensors").unlink()
    data = (tmp_path / "probe.pt").read_bytes() if name.endswith(".pt") else pickle.dumps(Payload(marker))
    (trained / name).write_bytes(data)
    code, _, err = run(capsys, "train", "-o", trained, *SMALL, "--resume")
    expected = "pickled" if name.endswith(".pt") else "not a readable deeprank state file"
    assert_one_line_error(code, err, name, expected)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["train_state.safetensors", "model.safetensors", "config.json"])
@pytest.mark.parametrize("keep", [0, 7, 200, -10])
def test_a_truncated_checkpoint_file_on_resume_is_one_line(capsys, trained, name, keep):
    path = trained / name
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    code, _, err = run(capsys, "train", "-o", trained, *SMALL, "--resume")
    assert_one_line_error(code, err, name)


def test_bad_numbers_are_one_line(capsys, tmp_path):
    for flag, value, fragment in [
        ("--image-size", "0", "image_size"),
        ("--threads", "-2", "threads"),
        ("--threads", "0", "threads"),
        ("--embedding-dim", "0", "embedding_dim"),
    ]:
        code, _, err = run(capsys, "train", "-o", tmp_path / "o", *SMALL, flag, value)
        assert_one_line_error(code, err, fragment, value)
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("suffix", [".png", ".pt", ".safetensors", ".bin"])
def test_a_convnet_weights_file_that_is_not_one_is_one_line(capsys, tmp_path, suffix):
    path = tmp_path / f"some{suffix}"
    Image.new("RGB", (8, 8)).save(path, format="PNG")
    code, _, err = run(capsys, "train", "-o", tmp_path / "o", *SMALL, "--convnet-weights", path)
    assert_one_line_error(code, err, str(path), "weight file")
    assert "weights_only=False" not in err  # torch's advice to unpickle is not passed on


def test_a_bad_output_cache_setting_warns_and_training_runs(tmp_path):
    # os.environ's PYTHONPATH (tests/conftest.py) points at the deeprank this process imported.
    env = {**os.environ, "DEEPRANK_OUTPUT_CACHE_MB": "abc"}
    argv = [sys.executable, "-m", "deeprank", "train", "-o", str(tmp_path / "o"), *SMALL]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "DEEPRANK_OUTPUT_CACHE_MB must be a whole number" in done.stderr and "'abc'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_triplet_csv_with_one_readable_triplet_trains_and_an_all_bad_one_is_one_line(capsys, tmp_path):
    for name in ("a", "b", "c"):
        Image.new("RGB", (12, 12), (40 * len(name), 90, 200)).save(tmp_path / f"{name}.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "one.csv").write_text("a.png,b.png,c.png\nbad.png,b.png,c.png\na.png,bad.png,c.png\n")
    code, _, err = run(capsys, "train", tmp_path / "one.csv", "-o", tmp_path / "o1", *SMALL)
    assert code == 0, err
    (tmp_path / "none.csv").write_text("bad.png,b.png,c.png\na.png,bad.png,c.png\n")
    code, _, err = run(capsys, "train", tmp_path / "none.csv", "-o", tmp_path / "o2", *SMALL)
    assert_one_line_error(code, err.replace(err.split("\n")[0] + "\n", "", 1), "every triplet")
    assert err.startswith("deeprank: warning: skipping") and "bad.png" in err.splitlines()[0]
