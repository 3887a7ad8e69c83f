"""One rank of a 2-step distributed run per input kind (started by tests/training/test_distributed_kinds.py).

``python ddp_kinds_worker.py OUT FOLDER TRIPLETS_CSV SCORES_CSV`` with torchrun's variables set joins
the process group once and trains, one after the other, on the triplet CSV, the unlabelled folder,
the folder with a score table and the folder with golden features, into ``OUT/<kind>``; then a run
at a learning rate that overflows the weights, writing each rank's error to ``OUT/diverged-{r}.txt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

KINDS = ("triplets", "unlabelled", "table", "golden")


def main(out: Path, folder: Path, triplets: Path, scores: Path) -> None:
    from deeprank.errors import DeeprankError
    from deeprank.training import TrainConfig
    from deeprank.training.distributed import detect_world, start, stop
    from deeprank.training.loop import _run

    torch.set_num_threads(1)
    world = detect_world()
    start(world, torch.device("cpu"))
    settings = {
        "triplets": dict(data=str(triplets)),
        "unlabelled": dict(data=str(folder / "c1"), data_kind="unlabelled"),
        "table": dict(data=str(folder), relevance=str(scores)),
        "golden": dict(data=str(folder), relevance="golden"),
    }
    for kind in KINDS:
        config = TrainConfig(
            output=str(out / kind),
            image_size=32,
            batch_size=2,
            max_steps=2,
            device="cpu",
            checkpoint_every=0,
            warmup_steps=1,
            **settings[kind],
        )
        _run(config, False, world)
    config = TrainConfig(output=str(out / "diverged"), lr=1e30, warmup_steps=0, max_steps=6, batch_size=2)
    try:
        _run(config, False, world)
    except DeeprankError as exc:
        (out / f"diverged-{world.rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
    stop()


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:5]))
