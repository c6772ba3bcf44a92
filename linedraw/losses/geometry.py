"""Geometry loss: a head reading features of the drawing should recover the photo's geometry map."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("l1", "bce")


class GeometryLoss(nn.Module):
    """Compares `head(features(drawing))` with a target map (depth or edges) of the source photo.

    `features` is a frozen extractor returning a list of feature maps (1-channel drawings are repeated to
    3 channels first); `head` is trained jointly. `kind`: "l1" on sigmoid(logits) (the paper) or "bce"
    (binary cross-entropy with logits).
    """

    def __init__(self, features: nn.Module, head: nn.Module, kind: str = "l1") -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"geometry loss kind must be one of {KINDS}, got {kind!r}")
        self.features = features
        self.head = head
        self.kind = kind

    def forward(self, drawing: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean per-pixel loss over rows where `valid` (B,) is True; no valid row gives a zero with grad.

        Every row still runs through the head, so all processes in data-parallel training use the same
        parameters (a rank whose batch has no targets would otherwise make the others wait forever).
        """
        if target.shape[0] != drawing.shape[0] or target.shape[1] != 1 or valid.shape != (drawing.shape[0],):
            raise ValueError(
                f"geometry loss expects target (B,1,H,W) and valid (B,) for drawing {tuple(drawing.shape)}, "
                f"got target {tuple(target.shape)} and valid {tuple(valid.shape)}"
            )
        images = drawing.expand(-1, 3, -1, -1) if drawing.shape[1] == 1 else drawing
        logits = self.head(self.features(images), size=tuple(target.shape[-2:]))
        valid = valid.to(device=logits.device, dtype=torch.bool)
        # Rows without a target may hold anything (even NaN); replace them so they cannot leak into gradients.
        target = torch.where(valid[:, None, None, None], target, torch.zeros_like(target)).to(logits.dtype)
        if self.kind == "l1":
            per_pixel = (torch.sigmoid(logits) - target).abs()
        else:
            per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        per_row = per_pixel.flatten(1).mean(1)
        per_row = torch.where(valid, per_row, torch.zeros_like(per_row))
        return per_row.sum() / valid.sum().clamp(min=1)
