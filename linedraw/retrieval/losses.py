"""Cross-domain metric-learning losses for the sketch embedder: sketches (queries) against gallery images.

The default is `cross_domain_supcon`, a supervised InfoNCE over class labels (Khosla et al. 2020, applied
across the two domains). Every same-class gallery item in the batch is a positive, so a P x K batch gives
K positives per anchor instead of one, and the softmax weighs each negative by exp(similarity / temperature):
the gradient concentrates on the hardest negatives without an explicit mining step (Wang & Liu, CVPR 2021).
Called with instance ids instead of classes, the same function is the fine-grained term (a sketch's own
photo against everything else, same-class photos included). `batch_hard_triplet` (Hermans et al. 2017) is
the classic SBIR alternative with explicit hardest-positive / hardest-negative mining.
All embeddings are expected L2-normalised, so a dot product is the cosine similarity.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _supcon_direction(logits: Tensor, positive: Tensor) -> Tensor:
    """Mean over anchors (rows) with at least one positive of -mean log p(positive | anchor)."""
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = positive.sum(dim=1)
    has_pos = n_pos > 0
    if not has_pos.any():
        return logits.sum() * 0.0  # keeps the graph, so a degenerate batch still backpropagates a zero
    per_anchor = -(log_prob * positive).sum(dim=1)[has_pos] / n_pos[has_pos]
    return per_anchor.mean()


def cross_domain_supcon(
    queries: Tensor,
    gallery: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    temperature: float = 0.1,
) -> Tensor:
    """Symmetric supervised InfoNCE between two domains: (query -> gallery + gallery -> query) / 2.

    queries (Nq, D) and gallery (Ng, D) are L2-normalised; labels are integer tensors (class or instance ids).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = queries @ gallery.T / temperature
    positive = (query_labels[:, None] == gallery_labels[None, :]).to(logits.dtype)
    return 0.5 * (_supcon_direction(logits, positive) + _supcon_direction(logits.T, positive.T))


def batch_hard_triplet(
    queries: Tensor,
    gallery: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    margin: float = 0.2,
) -> Tensor:
    """Batch-hard triplet loss with cosine distance: per query, its farthest same-class gallery item against
    its nearest other-class one, hinge at `margin`; averaged over queries that have both."""
    distance = 1.0 - queries @ gallery.T
    positive = query_labels[:, None] == gallery_labels[None, :]
    valid = positive.any(dim=1) & (~positive).any(dim=1)
    if not valid.any():
        return distance.sum() * 0.0
    hardest_positive = distance.masked_fill(~positive, float("-inf")).amax(dim=1)
    hardest_negative = distance.masked_fill(positive, float("inf")).amin(dim=1)
    return torch.relu(margin + hardest_positive - hardest_negative)[valid].mean()


LOSSES = {"supcon": cross_domain_supcon, "triplet": batch_hard_triplet}


def retrieval_loss(
    queries: Tensor,
    gallery: Tensor,
    query_classes: Tensor,
    gallery_classes: Tensor,
    query_instances: Tensor | None = None,
    gallery_instances: Tensor | None = None,
    kind: str = "supcon",
    instance_weight: float = 0.0,
    temperature: float = 0.1,
    margin: float = 0.2,
) -> tuple[Tensor, dict[str, float]]:
    """Class-level loss plus `instance_weight` x the same loss over instance ids; returns (total, parts)."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose from {sorted(LOSSES)}")
    extra = {"temperature": temperature} if kind == "supcon" else {"margin": margin}
    fn = LOSSES[kind]
    class_term = fn(queries, gallery, query_classes, gallery_classes, **extra)
    parts = {"class": float(class_term.detach())}
    total = class_term
    if instance_weight > 0:
        if query_instances is None or gallery_instances is None:
            raise ValueError("instance_weight > 0 needs query_instances and gallery_instances")
        instance_term = fn(queries, gallery, query_instances, gallery_instances, **extra)
        parts["instance"] = float(instance_term.detach())
        total = total + instance_weight * instance_term
    return total, parts
