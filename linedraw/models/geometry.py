"""Geometry head: turns multi-scale features of a drawing into a one-channel map (depth or edges)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from linedraw.models import register_model


@register_model("geometry_head")
class GeometryHead(nn.Module):
    """Projects each feature map to `width` channels (1x1 conv), upsamples all to the finest one, sums them,
    refines with a 3x3 conv and predicts `out_channels` logits, resized to the requested size.

    No batch norm, so rows do not influence each other and masked rows truly contribute nothing.
    """

    def __init__(self, in_channels: list[int], out_channels: int = 1, width: int = 64) -> None:
        super().__init__()
        if not in_channels or min(in_channels) < 1 or out_channels < 1 or width < 1:
            raise ValueError(
                f"invalid geometry head size: in_channels={in_channels}, "
                f"out_channels={out_channels}, width={width}"
            )
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.width = width
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in self.in_channels)
        self.refine = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.predict = nn.Conv2d(width, out_channels, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Logits (B, out_channels, *size) from `features` (one tensor per entry of `in_channels`)."""
        if len(features) != len(self.lateral):
            raise ValueError(f"geometry head expects {len(self.lateral)} feature maps, got {len(features)}")
        finest = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
        fused = 0
        for feature, lateral in zip(features, self.lateral):
            projected = lateral(feature)
            if projected.shape[-2:] != finest:
                projected = F.interpolate(projected, size=finest, mode="bilinear", align_corners=False)
            fused = fused + projected
        logits = self.predict(self.refine(fused))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights to a safetensors file atomically (temp file in the same folder + rename)."""
        from safetensors.torch import save

        from linedraw.images import write_atomic

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_atomic(path, lambda handle: handle.write(save(state)))

    @classmethod
    def from_safetensors(
        cls, path: str | os.PathLike, in_channels: list[int] | None = None
    ) -> "GeometryHead":
        """Build a head from a safetensors file, reading its sizes from the weight shapes.

        `in_channels`, if given, must match the file (the feature extractor it is used with).
        """
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: geometry head weights not found")
        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
        n = 0
        while f"lateral.{n}.weight" in state:
            n += 1
        if n == 0 or "predict.weight" not in state:
            raise ValueError(f"{path}: not a geometry head checkpoint (no lateral.*/predict weights)")
        file_channels = [int(state[f"lateral.{i}.weight"].shape[1]) for i in range(n)]
        if in_channels is not None and list(in_channels) != file_channels:
            raise ValueError(
                f"{path}: geometry head was trained on features with channels {file_channels}, "
                f"but the feature extractor gives {list(in_channels)}"
            )
        out_channels, width = state["predict.weight"].shape[:2]
        head = cls(file_channels, out_channels=int(out_channels), width=int(width))
        head.load_state_dict(state)
        return head
