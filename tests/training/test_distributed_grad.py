"""Distributed loss over the global batch: 2 gloo ranks x B give the 1-process gradient of 2B.

Two real ranks (``tests/helpers/ddp_worker.py``) each back-propagate their slice of one fixed batch
through a DDP-wrapped Trainer with synchronised batch norm; the gradient every rank ends with must
be the one a single process computes on the whole batch, for the plain per-triplet loss and
batch-all mining, with equal and unequal slices (3 + 5 triplets: no hang, same gradient). Every
mode, semi-hard included, is also checked on fixed embeddings: each rank's rows get ``world_size``
times their share of the one-process gradient (which DDP's average over ranks turns into the sum).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ddp_worker import CASES, NETWORK_MODES, config, global_batch, global_embeddings, triplet_rows
from ranks import finish, launch
from safetensors.torch import load_file

from deeprank.training.loop import Trainer

WORKER = Path(__file__).resolve().parents[1] / "helpers" / "ddp_worker.py"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' gradients and reports (one 2-process run for every case)."""
    out = tmp_path_factory.mktemp("ddp-grad")
    for rank, (code, _, stderr) in enumerate(finish(launch([str(WORKER), str(out)]), timeout=180)):
        assert code == 0, f"rank {rank} exited {code}:\n{stderr[-3000:]}"
    return [
        (load_file(str(out / f"rank{r}.safetensors")), json.loads((out / f"rank{r}.json").read_text()))
        for r in range(2)
    ]


def _reference(mode: str, tmp_path) -> tuple[torch.Tensor, float, dict[str, torch.Tensor], float]:
    """One process on the whole batch, in the ranks' order: embedding gradient and loss, then the
    network's parameter gradients and loss."""
    trainer = Trainer(config(mode, str(tmp_path / "unused")))
    # The ranks draw batch-all's random triplets from their shared mining stream (seed + 3).
    trainer.mining_rng = torch.Generator().manual_seed(trainer.config.seed + 3)
    x, labels = global_batch()
    embeddings = global_embeddings().requires_grad_()
    loss, embedding_loss = trainer._loss(embeddings, labels)
    loss.backward()
    network_loss = trainer.backward(x, labels) if mode in NETWORK_MODES else float("nan")
    params = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return embeddings.grad, embedding_loss, params, network_loss


def _relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    a = torch.cat([got[k].double().flatten() for k in want])
    b = torch.cat([want[k].double().flatten() for k in want])
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("mode", "sizes"), CASES)
def test_each_rank_gets_its_share_of_the_global_batch_gradient(ranks, mode, sizes, tmp_path):
    want, loss, _, _ = _reference(mode, tmp_path)
    key = f"{mode}/{sizes[0]}-{sizes[1]}/embeddings"
    assert float(want.abs().max()) > 0
    for rank, (grads, report) in enumerate(ranks):
        lo = sum(sizes[:rank])
        rows = triplet_rows(want, lo, lo + sizes[rank])
        torch.testing.assert_close(grads[key] / 2, rows, rtol=1e-5, atol=1e-7, msg=key)
        assert report[key] == pytest.approx(loss, rel=1e-6)


@pytest.mark.parametrize(("mode", "sizes"), [c for c in CASES if c[0] in NETWORK_MODES])
def test_two_ranks_give_the_one_process_parameter_gradient(ranks, mode, sizes, tmp_path):
    _, _, want, loss = _reference(mode, tmp_path)
    key = f"{mode}/{sizes[0]}-{sizes[1]}"
    assert any(float(g.abs().max()) > 0 for g in want.values())
    for grads, report in ranks:
        got = {name: grads[f"{key}/{name}"] for name in want}
        assert _relative_error(got, want) < 1e-4, key
        assert report[key] == pytest.approx(loss, rel=1e-5)
    # DDP leaves the same gradient on both ranks.
    first = {n: ranks[0][0][f"{key}/{n}"] for n in want}
    assert _relative_error({n: ranks[1][0][f"{key}/{n}"] for n in want}, first) < 1e-6


def test_the_gradient_check_can_fail(ranks, tmp_path):
    # Without the world-size scaling DDP's average would be half the gradient, and the gradient of
    # another loss is another: the tolerance above tells both apart.
    _, _, want, _ = _reference("batch-all", tmp_path)
    got = {n: ranks[0][0][f"batch-all/4-4/{n}"] for n in want}
    assert _relative_error({n: g / 2 for n, g in got.items()}, want) > 0.3
    other = {n: ranks[0][0][f"none/4-4/{n}"] for n in want}
    assert _relative_error(other, want) > 1e-2


def test_a_failure_on_one_rank_stops_both_with_its_message(ranks):
    assert [report["error"] for _, report in ranks] == ["rank 1 stopped the run: ValueError: boom"] * 2
