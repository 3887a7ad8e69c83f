"""Every input kind trains on 2 gloo ranks: triplet CSV, unlabelled folder, score table, golden features
(image folders and Fashion-MNIST are in test_distributed_run.py); a diverged loss stops both ranks."""

from __future__ import annotations

import json
from pathlib import Path

from ddp_kinds_worker import KINDS
from ranks import finish, launch

from deeprank.models.checkpoint import load_model

WORKER = Path(__file__).resolve().parents[1] / "helpers" / "ddp_kinds_worker.py"


def test_every_input_kind_trains_distributed(image_folder, tmp_path):
    root = image_folder(corrupt=False)
    triplets = tmp_path / "t.csv"
    triplets.write_text(
        "\n".join(
            f"f/c{c}/{i}.png,f/c{c}/{(i + 1) % 6}.png,f/c{(c + 1) % 3}/{i}.png"
            for c in range(3)
            for i in range(6)
        )
    )
    scores = tmp_path / "scores.csv"
    scores.write_text(
        "\n".join(
            f"c{c}/{i}.png,c{c}/{j}.png,{1.0 / (1 + abs(i - j))}"
            for c in range(3)
            for i in range(6)
            for j in range(i + 1, 6)
        )
    )
    out = tmp_path / "out"
    argv = [str(WORKER), str(out), str(root), str(triplets), str(scores)]
    for rank, (code, _, stderr) in enumerate(finish(launch(argv), timeout=240)):
        assert code == 0, f"rank {rank} exited {code}:\n{stderr[-3000:]}"
    for kind in KINDS:
        config = json.loads((out / kind / "config.json").read_text())
        assert config["progress"]["step"] == 2 and config["progress"]["triplets"] == 2 * 2 * 2, kind
        assert {json.loads((out / kind / f"rank-{r}.json").read_text())["world_size"] for r in range(2)} == {
            2
        }
        load_model(out / kind)
    messages = {(out / f"diverged-{r}.txt").read_text() for r in range(2)}
    assert len(messages) == 1 and messages.pop().startswith("DivergedError: training diverged at step")
