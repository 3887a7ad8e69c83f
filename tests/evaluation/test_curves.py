"""deeprank plot RUN (deeprank.evaluation.curves): the curves of a run's log as a PNG."""

import json

import numpy as np
import pytest
from PIL import Image

from deeprank import cli
from deeprank.evaluation.curves import plot_run


def _log(run, records):
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_loss_and_validation_curves_are_drawn(tmp_path):
    run = tmp_path / "run"
    records = [{"event": "train", "step": s, "loss": 1.0 / s, "lr": 0.1} for s in range(1, 41)]
    records += [
        {"event": "val", "step": s, "precision_at_1": s / 50, "similarity_precision": 0.9} for s in (20, 40)
    ]
    _log(run, records)
    path = plot_run(run)
    assert path == run / "curves.png"
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    # The validation series' colours appear in the lower panel, the loss line's dark blue in the upper.
    lower, upper = pixels[360:], pixels[:330]
    assert (np.abs(lower - [33, 113, 181]).sum(-1) == 0).sum() > 50
    assert (np.abs(lower - [230, 85, 13]).sum(-1) == 0).sum() > 50
    assert (np.abs(upper - [20, 50, 120]).sum(-1) == 0).sum() > 50


def test_a_run_without_validation_still_plots(tmp_path):
    _log(tmp_path / "r", [{"event": "train", "step": 1, "loss": 0.5}])
    assert plot_run(tmp_path / "r", tmp_path / "out.png").stat().st_size > 0


def test_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no training log"):
        plot_run(tmp_path)
    _log(tmp_path / "empty", [])
    with pytest.raises(ValueError, match="no training steps"):
        plot_run(tmp_path / "empty")
    assert cli.main(["plot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training run folder not found" in err[0]


def test_cli_plot_after_training(tmp_path, capsys):
    argv = ["train", "-o", str(tmp_path / "run"), "--max-steps", "3", "--batch-size", "4",
            "--device", "cpu", "--no-progress", "--checkpoint-every", "0", "--val-every", "3",
            "--val-fraction", "0.02"]  # fmt: skip
    assert cli.main(argv) == 0
    assert cli.main(["plot", str(tmp_path / "run")]) == 0
    assert f"curves: {tmp_path / 'run' / 'curves.png'}" in capsys.readouterr().out
