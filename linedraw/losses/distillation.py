"""Distillation loss: a student generator's drawing against its teacher's, pixel and edge terms."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, edge_weight: float = 1.0,
                      line_weight: float = 0.0) -> torch.Tensor:
    """Weighted L1 between drawings plus `edge_weight` x L1 between their Sobel gradients.

    Drawings are mostly white paper, so pixel L1 alone is nearly met by faint, blurred strokes; comparing
    gradients penalises missing, shifted or smeared line edges directly. `line_weight` gives pixels of the
    teacher's lines (1 - teacher) that much more weight: where a small student is unsure of a line's exact
    place, plain L1's optimum is the paper's white (a faint stroke), the weighted one keeps it dark. Both terms
    cost a few 3x3 filters and need no pretrained network (a VGG perceptual loss would need weights that are
    not available offline and would cost more than the student itself).
    """
    from kornia.filters import spatial_gradient

    if student.shape != teacher.shape:
        raise ValueError(f"student drawing shape {tuple(student.shape)} != teacher's {tuple(teacher.shape)}")
    if line_weight:
        weight = 1.0 + line_weight * (1.0 - teacher)
        loss = (weight * (student - teacher).abs()).sum() / weight.sum()
    else:
        loss = F.l1_loss(student, teacher)
    if edge_weight:
        loss = loss + edge_weight * F.l1_loss(spatial_gradient(student), spatial_gradient(teacher))
    return loss
