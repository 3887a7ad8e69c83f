"""In-batch mining (deeprank.training.mining) against brute-force float64 references."""

import itertools

import numpy as np
import pytest
import torch

from deeprank.training.mining import batch_all_triplet_loss, semi_hard_negatives


def _active_triplets(emb: np.ndarray, labels: np.ndarray, margin: float) -> list[tuple[int, int, int, float]]:
    """Every (a, p, n) with a positive hinge, by brute force in float64."""
    d = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    out = []
    for a, p, n in itertools.product(range(len(labels)), repeat=3):
        if a != p and labels[a] == labels[p] and labels[n] != labels[a]:
            h = margin + d[a, p] - d[a, n]
            if h > 0:
                out.append((a, p, n, h))
    return out


def _reference_mean_and_grad(emb: np.ndarray, labels: np.ndarray, margin: float):
    active = _active_triplets(emb, labels, margin)
    x = torch.tensor(emb, dtype=torch.float64, requires_grad=True)
    terms = [margin + (x[a] - x[p]).pow(2).sum() - (x[a] - x[n]).pow(2).sum() for a, p, n, _ in active]
    mean = torch.stack(terms).mean()
    mean.backward()
    return float(mean.detach()), x.grad.numpy(), len(active)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_all_is_an_unbiased_estimate_of_the_active_mean(dtype):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(21, 5))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, 4, size=21)
    exact, exact_grad, n_active = _reference_mean_and_grad(emb, labels, 1.0)
    assert n_active > 100  # the case exercises many active triplets per pair
    gen = torch.Generator().manual_seed(0)
    values, grads = [], []
    for _ in range(1500):
        x = torch.tensor(emb, dtype=dtype, requires_grad=True)
        loss = batch_all_triplet_loss(x, torch.from_numpy(labels), 1.0, gen)
        loss.backward()
        values.append(float(loss.detach())), grads.append(x.grad.double().numpy())
    values, grads = np.array(values), np.array(grads)
    se = values.std() / np.sqrt(len(values))
    assert abs(values.mean() - exact) < 5 * se + 1e-6
    grad_se = grads.std(axis=0) / np.sqrt(len(grads))
    assert np.all(np.abs(grads.mean(axis=0) - exact_grad) < 5 * grad_se + 1e-5)


def test_batch_all_counts_ties_as_inactive_and_returns_an_attached_zero():
    # D(a,p) = 0.25, D(a,n) = 2.25 = margin + D(a,p) exactly (margin 2): a tie, hinge 0; with p as
    # anchor, D(p,n) = 2.5 > 2.25: inactive. Every value is exact in binary floating point.
    emb = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 1.5]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    loss = batch_all_triplet_loss(emb, labels, margin=2.0)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(emb.grad) == 0


def test_batch_all_is_repeatable_with_a_generator_and_finds_the_only_triplet():
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([7, 7, 3])
    # Active: (0,1,2): 1 + 1 - 0.25 = 1.75 and (1,0,2): 1 + 1 - 1.25 = 0.75; mean 1.25.
    loss = batch_all_triplet_loss(emb, labels, 1.0, torch.Generator().manual_seed(3))
    assert float(loss.detach()) == pytest.approx(1.25, abs=1e-12)
    emb32 = torch.randn(30, 6)
    lab = torch.randint(0, 3, (30,))
    one = batch_all_triplet_loss(emb32, lab, 0.5, torch.Generator().manual_seed(9))
    two = batch_all_triplet_loss(emb32, lab, 0.5, torch.Generator().manual_seed(9))
    assert torch.equal(one, two)


def test_mining_rejects_bad_inputs():
    with pytest.raises(ValueError, match="embeddings must be a \\[N, D\\]"):
        batch_all_triplet_loss(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be a \\[N\\] tensor"):
        batch_all_triplet_loss(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        semi_hard_negatives(torch.zeros(6, 2), torch.zeros(5, dtype=torch.long), 1.0)


def test_mined_negatives_are_semi_hard_and_of_another_category():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 1, 0, 3, 2])
    q, p, n = semi_hard_negatives(emb, labels, margin=1.0)
    d_pos = (q - p).pow(2).sum(1)
    d_neg = (q - n).pow(2).sum(1)
    replaced = 0
    for i in range(4):
        chosen = int(torch.nonzero((emb == n[i]).all(dim=1))[0])
        if chosen != 8 + i:  # not the sampled fallback: must be semi-hard and of another category
            replaced += 1
            assert labels[chosen] != labels[i] and d_pos[i] < d_neg[i] < d_pos[i] + 1.0
    assert replaced > 0  # the case must exercise the mining, not only the fallback
