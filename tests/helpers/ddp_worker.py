"""One rank of the distributed-gradient checks (started by tests/training/test_distributed_grad.py).

``python ddp_worker.py OUT`` with torchrun's variables set: for each case of :data:`CASES` it builds
a real :class:`~deeprank.training.loop.Trainer` (DDP, synchronised batch norm) and

* back-propagates the loss of its rows of fixed global *embeddings* (:func:`global_embeddings`):
  the gather, layout and scaling of every mining mode, bit for bit the same inputs as one process;
* back-propagates its slice of the fixed global image batch (:func:`global_batch`) through the
  network (not for semi-hard: see :data:`NETWORK_MODES`);

and writes the gradients to ``OUT/rank{r}.safetensors`` and the losses and the error-agreement
message to ``OUT/rank{r}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

#: (mining mode, triplets on rank 0 and rank 1); the global batch has 8 triplets
CASES = [
    ("none", (4, 4)),
    ("batch-all", (4, 4)),
    ("semi-hard", (4, 4)),
    ("none", (3, 5)),
    ("batch-all", (3, 5)),
    ("semi-hard", (3, 5)),
]
TOTAL = 8
#: Through the network, a fresh model's embeddings lie close together: every triplet is active
#: (D(a,n) < margin + D(a,p) for all), so batch-all's choices cannot flip on float rounding, while
#: semi-hard's "closest negative farther than the positive" can; semi-hard is checked on embeddings.
NETWORK_MODES = ("none", "batch-all")


def global_embeddings() -> torch.Tensor:
    """Fixed unit-norm ``[3 * TOTAL, 16]`` embeddings, spread out (distances of order 1)."""
    g = torch.Generator().manual_seed(1)
    return torch.nn.functional.normalize(torch.randn(3 * TOTAL, 16, generator=g), dim=1)


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked ``[q; p; n]`` float images (no max-pooling ties) and labels of 3 categories."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(3 * TOTAL, 1, 28, 28, generator=g), torch.randint(0, 3, (3 * TOTAL,), generator=g)


def triplet_rows(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Triplets ``lo..hi-1`` of a stacked ``[q; p; n]`` tensor, stacked again."""
    q, p, n = t[:TOTAL], t[TOTAL : 2 * TOTAL], t[2 * TOTAL :]
    return torch.cat([q[lo:hi], p[lo:hi], n[lo:hi]])


def config(mode: str, output: str):
    from deeprank.training import TrainConfig

    return TrainConfig(
        output=output, mining=mode, max_shift=0, device="cpu", batch_size=4, checkpoint_every=0
    )


def main(out: Path) -> None:
    from safetensors.torch import save_file

    from deeprank.training.distributed import (
        DistributedError,
        agree_on_error,
        detect_world,
        start,
        stop,
        sum_floats,
    )
    from deeprank.training.loop import Trainer

    torch.set_num_threads(1)
    world = detect_world()
    start(world, torch.device("cpu"))
    x, labels = global_batch()
    grads, report = {}, {}
    for mode, sizes in CASES:
        trainer = Trainer(config(mode, str(out / "unused")), world=world)
        lo = sum(sizes[: world.rank])
        hi = lo + sizes[world.rank]
        key = f"{mode}/{sizes[0]}-{sizes[1]}"
        local = triplet_rows(global_embeddings(), lo, hi).requires_grad_()
        loss, share = trainer._loss(local, triplet_rows(labels, lo, hi))
        loss.backward()
        grads[f"{key}/embeddings"] = local.grad.contiguous()
        report[f"{key}/embeddings"] = sum_floats([share], world)[0]
        if mode in NETWORK_MODES:
            share = trainer.backward(triplet_rows(x, lo, hi), triplet_rows(labels, lo, hi))
            report[key] = sum_floats([share], world)[0]
            for name, p in trainer.model.named_parameters():
                grads[f"{key}/{name}"] = p.grad.detach().contiguous()
    try:
        agree_on_error(ValueError("boom") if world.rank == 1 else None, world, "the test")
        report["error"] = None
    except DistributedError as exc:
        report["error"] = str(exc)
    save_file(grads, str(out / f"rank{world.rank}.safetensors"))
    (out / f"rank{world.rank}.json").write_text(json.dumps(report))
    stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
