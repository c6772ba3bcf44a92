"""Distillation loss: a student generator's drawing against its teacher's, pixel and edge terms."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, edge_weight: float = 1.0) -> torch.Tensor:
    """L1 between drawings plus `edge_weight` x L1 between their Sobel gradients.

    Drawings are mostly white paper, so pixel L1 alone is nearly met by faint, blurred strokes; comparing
    gradients penalises missing, shifted or smeared line edges directly. It costs two 3x3 filters and needs no
    pretrained network (a VGG perceptual loss would need weights that are not available offline and would cost
    more than the student itself).
    """
    from kornia.filters import spatial_gradient

    if student.shape != teacher.shape:
        raise ValueError(f"student drawing shape {tuple(student.shape)} != teacher's {tuple(teacher.shape)}")
    loss = F.l1_loss(student, teacher)
    if edge_weight:
        loss = loss + edge_weight * F.l1_loss(spatial_gradient(student), spatial_gradient(teacher))
    return loss
