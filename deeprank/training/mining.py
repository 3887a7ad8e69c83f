"""In-batch triplet mining: more ranking signal from embeddings a training step already computed.

A training step embeds ``3B`` images (the sampler's ``B`` queries, positives and negatives) once.
With a category per image, the batch holds far more valid triplets than the ``B`` it was built from:
every ``(a, p, n)`` with ``p`` in ``a``'s category and ``n`` outside it. Both functions here reuse
the step's embeddings (no extra forward pass) and end in the paper's per-triplet hinge
(:func:`deeprank.triplet_loss`):

* :func:`batch_all_triplet_loss`: an unbiased estimate of the mean hinge over *every* in-batch
  triplet whose hinge is positive ("batch all"); the default when categories are the relevance.
* :func:`semi_hard_negatives`: keep each sampled ``(q, p)`` and swap its negative for a semi-hard
  one (FaceNet's rule).

Both use categories only; a relevance order *inside* a category (golden features, a score table)
is what the sampler's own triplets carry, so training keeps those as sampled.
"""

from __future__ import annotations

import torch

from ..ops.triplet import triplet_loss

__all__ = ["batch_all_triplet_loss", "semi_hard_negatives"]


def _check(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        raise ValueError(
            f"embeddings must be a [N, D] tensor, got {getattr(embeddings, 'shape', embeddings)}"
        )
    if not isinstance(labels, torch.Tensor) or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"labels must be a [N] tensor matching embeddings' {embeddings.shape[0]} rows, "
            f"got {getattr(labels, 'shape', labels)}"
        )


def batch_all_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Estimate the mean of ``max(0, margin + D(a,p) - D(a,n))`` over all active in-batch triplets.

    For each ordered pair ``(a, p)`` of distinct images of one category, let ``c`` be the number of
    images of other categories that violate the margin (``D(a,n) < margin + D(a,p)``). One of those
    ``c`` is drawn uniformly and its hinge weighted by ``c / sum(c)``: the expectation is exactly
    the mean over all ``sum(c)`` active triplets, at the cost of one triplet per pair instead of
    ``c``. Sorting each anchor's negative distances once finds every ``c`` by binary search, so no
    ``N^3`` tensor is formed (work ``O(N^2 log N)``, memory ``O(N^2)`` for ``N`` images).

    Args:
        embeddings: ``[N, D]`` float embeddings (e.g. the stacked ``[q; p; n]`` of a step).
        labels: ``[N]`` integer category of each row.
        margin: the gap ``g`` of the hinge.
        generator: random source of the draws (training passes its saved one for exact resume).

    Returns:
        A scalar with gradients to ``embeddings``; ``0`` (still attached) when nothing is active.
    """
    _check(embeddings, labels)
    with torch.no_grad():
        e = embeddings.detach()
        sq = (e * e).sum(dim=1)
        dist = (sq[:, None] + sq[None, :] - 2.0 * (e @ e.T)).clamp_min_(0.0)
        same = labels[:, None] == labels[None, :]
        neg_sorted, neg_order = dist.masked_fill(same, float("inf")).sort(dim=1)
        # active[a, p]: how many negatives n of anchor a have D(a,n) < margin + D(a,p).
        active = torch.searchsorted(neg_sorted, (margin + dist).contiguous())
        positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        a, p = (positive & (active > 0)).nonzero(as_tuple=True)
        count = active[a, p]
        total = int(count.sum())
    if total == 0:
        return embeddings.sum() * 0.0
    with torch.no_grad():
        u = torch.rand(count.shape, generator=generator, device="cpu").to(count.device)
        pick = torch.minimum((u * count).long(), count - 1)
        n = neg_order[a, pick]
        weight = count.to(embeddings.dtype) / total
    losses = triplet_loss(embeddings[a], embeddings[p], embeddings[n], margin, "none")
    return (losses * weight).sum()


def semi_hard_negatives(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace each sampled negative of a stacked ``[q; p; n]`` batch by a semi-hard one from the batch.

    Among the batch's ``3B`` images of another category than the query, pick the closest one that is
    still farther than the positive (``D(q,p) < D(q,n) < D(q,p) + margin``); keep the sampled
    negative when none qualifies. Returns ``(q, p, n)`` for :func:`deeprank.triplet_loss`.
    """
    _check(embeddings, labels)
    q, p, _ = embeddings.chunk(3)
    with torch.no_grad():
        dist = torch.cdist(q, embeddings).pow_(2)  # [B, 3B]
        d_pos = (q - p).pow(2).sum(dim=1, keepdim=True)
        query_labels = labels[: q.shape[0]]
        ok = (labels[None, :] != query_labels[:, None]) & (dist > d_pos) & (dist < d_pos + margin)
        masked = dist.masked_fill(~ok, float("inf"))
        best = masked.argmin(dim=1)
        found = torch.isfinite(masked.gather(1, best[:, None]))[:, 0]
        sampled = torch.arange(2 * q.shape[0], 3 * q.shape[0], device=embeddings.device)
        choice = torch.where(found, best, sampled)
    return q, p, embeddings[choice]
