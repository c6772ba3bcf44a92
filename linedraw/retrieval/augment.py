"""Augmentations for training the sketch embedder: what varies between two sketches of the same thing.

Line images (sketches, drawings; dark lines on white) get stroke thickness changes (grey morphology),
small affine warps and partial erasure (missing strokes); photos get the affine warp only. All randomness
comes from an explicit `torch.Generator`, so a resumed run draws the same augmentations.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    degrees: float = 10.0,
    scale: tuple[float, float] = (0.85, 1.1),
    translate: float = 0.06,
    shear: float = 0.1,
    flip: bool = True,
    fill: float = 1.0,
) -> torch.Tensor:
    """Per-image rotation, isotropic scale, shear, translation and horizontal flip; uncovered area is `fill`."""
    n = images.shape[0]
    angle = _uniform(n, -degrees, degrees, generator) * math.pi / 180
    zoom = _uniform(n, *scale, generator)
    sh = _uniform(n, -shear, shear, generator)
    shift = _uniform(2 * n, -translate, translate, generator).view(n, 2) * 2  # grid units span 2
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos * mirror, -sin + sh, shift[:, 0]], 1), torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1
    ).to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (warped + fill).clamp(0.0, 1.0)


def stroke_thickness(lines: torch.Tensor, generator: torch.Generator, max_radius: int = 1) -> torch.Tensor:
    """Per image, thicken (min filter), thin (max filter) or keep the dark strokes; radius up to `max_radius`."""
    out = lines.clone()
    radius = torch.randint(-max_radius, max_radius + 1, (lines.shape[0],), generator=generator)
    for r in range(1, max_radius + 1):
        size = 2 * r + 1
        thick, thin = radius == r, radius == -r
        if thick.any():
            out[thick] = -F.max_pool2d(-lines[thick], size, stride=1, padding=r)
        if thin.any():
            out[thin] = F.max_pool2d(lines[thin], size, stride=1, padding=r)
    return out


def partial_erasure(
    lines: torch.Tensor, generator: torch.Generator, max_boxes: int = 3, max_side: float = 0.3
) -> torch.Tensor:
    """Whiten up to `max_boxes` random rectangles (sides up to `max_side` of the image): strokes go missing."""
    out = lines.clone()
    n, _, h, w = lines.shape
    counts = torch.randint(0, max_boxes + 1, (n,), generator=generator)
    for i in range(n):
        for _ in range(int(counts[i])):
            bh = max(1, int(h * float(_uniform(1, 0.05, max_side, generator))))
            bw = max(1, int(w * float(_uniform(1, 0.05, max_side, generator))))
            top = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
            out[i, :, top : top + bh, left : left + bw] = 1.0
    return out


def augment(images: torch.Tensor, generator: torch.Generator, lines: bool) -> torch.Tensor:
    """The training augmentation: for line images thickness + erasure + affine, for photos the affine only."""
    if lines:
        images = partial_erasure(stroke_thickness(images, generator), generator)
    return random_affine(images, generator)
