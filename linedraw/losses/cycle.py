"""Cycle-consistency loss: translating there and back should give the input again."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cycle_loss(reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between G_B(G_A(x)) (or G_A(G_B(y))) and x (or y)."""
    if reconstruction.shape != original.shape:
        raise ValueError(f"reconstruction shape {tuple(reconstruction.shape)} != original {tuple(original.shape)}")
    return F.l1_loss(reconstruction, original)
