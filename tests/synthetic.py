"""Tiny synthetic photo/drawing/mask/target folders, so training tests need no shared data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


class Needs8(torch.nn.Module):
    """A drawing model that takes only multiples of 8 (three stride-2 steps, say) and says so in `size_multiple`."""

    size_multiple = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"input height and width must be multiples of 8, got {tuple(x.shape)}")
        return torch.sigmoid(self.conv(x))


def make_unpaired_folders(root: Path, n_photos: int = 6, n_drawings: int = 5, size: tuple[int, int] = (80, 72),
                          seed: int = 0) -> Path:
    """Write photos/ (coloured shapes), masks/ (their class ids), targets/ (8-bit maps) and drawings/ (outlines)."""
    rng = np.random.default_rng(seed)
    for name in ("photos", "masks", "targets", "drawings"):
        (root / name).mkdir(parents=True, exist_ok=True)
    w, h = size
    for i in range(n_photos):
        photo = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 255, 3)))
        mask = Image.new("L", size, 0)
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        box = (x0, y0, x0 + w // 3, y0 + h // 3)
        ImageDraw.Draw(photo).rectangle(box, fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        ImageDraw.Draw(mask).rectangle(box, fill=1 + i % 3)
        photo.save(root / "photos" / f"p{i:02d}.jpg")
        mask.save(root / "masks" / f"p{i:02d}.png")
        target = Image.new("L", size, 0)
        ImageDraw.Draw(target).rectangle(box, outline=255, width=2)
        target.save(root / "targets" / f"p{i:02d}.png")
    for i in range(n_drawings):
        drawing = Image.new("L", size, 255)
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        ImageDraw.Draw(drawing).ellipse((x0, y0, x0 + w // 3, y0 + h // 3), outline=0, width=2)
        drawing.save(root / "drawings" / f"d{i:02d}_{i % 2}.png")
    return root


def tiny_config_yaml(data_root: Path, output_dir: Path) -> str:
    """A complete config with every loss on, tiny networks and tiny random teachers (no weights needed)."""
    return f"""
name: tiny
output_dir: {output_dir}
seed: 0
data:
  root: {data_root}
  photos:
    - path: photos
      masks: masks
      targets: targets
  drawings:
    - path: drawings
  size: 32
  load_size: 36
  workers: 0
model: {{ngf: 4, n_blocks: 1, ndf: 4, n_layers_d: 2}}
loss: {{gan: 1.0, cycle: 0.1, semantic: 1.0, geometry: 1.0, segmentation: 1.0}}
semantic: {{encoder: "timm:test_efficientnet:random"}}
geometry: {{backbone: test_efficientnet, backbone_weights: null, head_width: 8}}
segmentation: {{encoder: tu-test_efficientnet, num_classes: 4, encoder_depth: 3, decoder_channels: [16, 8, 8]}}
optim: {{batch_size: 2, epochs: 4, decay_epoch: 4}}
log: {{every: 1, images_every: 2, save_every: 2, keep: 2}}
"""
