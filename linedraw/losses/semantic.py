"""Semantic loss: a drawing should mean what its photo means to a frozen image encoder (e.g. CLIP)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

DISTANCES = ("mse", "cosine")


class SemanticLoss(nn.Module):
    """Distance between encoder embeddings of the generated drawing and of its source photo.

    `encoder` has `encode(images) -> (B, D)` for [0, 1] images with 1 or 3 channels (it resizes and
    normalises itself). `distance`: "mse" (the paper) or "cosine" (1 - cosine similarity). With
    `patches=N > 0`, N random `patch_size` crops, taken at the same place in drawing and photo, are also
    embedded; the loss is then whole-image distance + mean patch distance.
    """

    def __init__(self, encoder: nn.Module, distance: str = "mse", patches: int = 0, patch_size: int = 128) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"semantic distance must be one of {DISTANCES}, got {distance!r}")
        if patches < 0 or patch_size < 1:
            raise ValueError(f"invalid semantic patches: patches={patches}, patch_size={patch_size}")
        self.encoder = encoder
        self.distance = distance
        self.patches = patches
        self.patch_size = patch_size

    def embedding_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Mean distance between two (B, D) embedding batches."""
        if self.distance == "mse":
            return F.mse_loss(a, b)
        return (1 - F.cosine_similarity(a, b, dim=1)).mean()

    def forward(self, drawing: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
        """Loss for drawings (B,1,H,W) generated from photos (B,3,H,W); gradients reach the drawing only."""
        if drawing.shape[0] != photo.shape[0] or drawing.shape[-2:] != photo.shape[-2:]:
            raise ValueError(
                f"drawing {tuple(drawing.shape)} and photo {tuple(photo.shape)} differ in batch or size"
            )
        with torch.no_grad():
            photo_embedding = self.encoder.encode(photo)
        loss = self.embedding_distance(self.encoder.encode(drawing), photo_embedding)
        if self.patches:
            drawing_patches, photo_patches = self.random_patches(drawing, photo)
            with torch.no_grad():
                photo_patch_embedding = self.encoder.encode(photo_patches)
            loss = loss + self.embedding_distance(self.encoder.encode(drawing_patches), photo_patch_embedding)
        return loss

    def random_patches(self, drawing: torch.Tensor, photo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`patches` crops per image at random places shared by drawing and photo: (B*N, C, p, p) each."""
        h, w = drawing.shape[-2:]
        p = self.patch_size
        if p > h or p > w:
            raise ValueError(f"semantic patch_size {p} is larger than the {h}x{w} training crop")
        count = drawing.shape[0] * self.patches
        tops = torch.randint(h - p + 1, (count,)).tolist()
        lefts = torch.randint(w - p + 1, (count,)).tolist()
        drawings, photos = [], []
        for i, (top, left) in enumerate(zip(tops, lefts)):
            row = i // self.patches
            drawings.append(drawing[row, :, top : top + p, left : left + p])
            photos.append(photo[row, :, top : top + p, left : left + p])
        return torch.stack(drawings), torch.stack(photos)
