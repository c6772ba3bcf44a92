"""Compact student generator for fast conversion, distilled from a ResNet generator (`linedraw distill`).

The teacher spends most of its compute on full-resolution 7x7 and 3x3 convolutions. The student never convolves
at full resolution: the photo is folded into 2x2 blocks (pixel unshuffle), processed at 1/2 and 1/4 scale with
depthwise-separable inverted-residual blocks (MobileNetV2's), and unfolded back with a pixel shuffle, so every
output pixel still has its own value (thin lines survive). No normalisation layers: the output of a pixel
depends only on its neighbourhood, so tiled conversion needs no image-wide statistics and is seamless.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from linedraw.models import register_model


class InvertedResidual(nn.Module):
    """1x1 expand -> ReLU -> depthwise 3x3 -> ReLU -> 1x1 project, plus the input (MobileNetV2 block)."""

    def __init__(self, channels: int, expansion: int = 2) -> None:
        super().__init__()
        hidden = channels * expansion
        self.block = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


@register_model("fast_generator")
class FastGenerator(nn.Module):
    """Pixel-unshuffle stem -> 1/2 scale (`width` ch) -> 1/4 scale (`2 * width` ch, `n_blocks` inverted residual
    blocks) -> upsample + skip -> 1/2 scale (`n_blocks_half` blocks) -> pixel shuffle -> sigmoid.

    Outputs are in [0, 1]; H and W must be multiples of `size_multiple` (use `pad_to_multiple`).
    """

    #: Input H and W must be divisible by this (a pixel unshuffle and a stride-2 convolution).
    size_multiple: int = 4
    #: What a checkpoint of this model recommends for conversion (its JSON's "inference", read by `Converter`):
    #: bench/convert.py found channels-last and ONNX Runtime fastest for it on CPU (README, Performance).
    inference_defaults = {"channels_last": True, "cpu_backend": "onnxruntime"}

    def __init__(self, in_channels: int = 3, out_channels: int = 1, width: int = 24, n_blocks: int = 8,
                 n_blocks_half: int = 1, expansion: int = 2) -> None:
        super().__init__()
        if min(in_channels, out_channels, width, expansion) < 1 or min(n_blocks, n_blocks_half) < 0:
            raise ValueError(f"invalid student size: in_channels={in_channels}, out_channels={out_channels}, "
                             f"width={width}, n_blocks={n_blocks}, n_blocks_half={n_blocks_half}, "
                             f"expansion={expansion}")
        self.in_channels, self.out_channels = in_channels, out_channels
        deep = 2 * width
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4 * in_channels, width, 3, padding=1),
                                  nn.ReLU(inplace=True))
        self.down = nn.Sequential(nn.Conv2d(width, deep, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                                  *[InvertedResidual(deep, expansion) for _ in range(n_blocks)])
        self.up = nn.Conv2d(deep, width, 1)
        self.mid = nn.Sequential(*[InvertedResidual(width, expansion) for _ in range(n_blocks_half)])
        self.head = nn.Sequential(nn.Conv2d(width, 4 * out_channels, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected a (B, {self.in_channels}, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"input height and width must be multiples of {self.size_multiple}, got {h}x{w}; "
                             "pad with linedraw.models.pad_to_multiple(x, model.size_multiple) and crop the output "
                             "back with crop_to")
        skip = self.stem(x)
        deep = self.up(self.down(skip))
        y = skip + F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.head(self.mid(y)))


@register_model("fast_generator_w24_b8")
def fast_generator_w24_b8(**kwargs) -> FastGenerator:
    """The shipped `contour-fast` student's shape (width 24, 8 blocks at 1/4 scale, 1 at 1/2, expansion 2), by name;
    `kwargs` may set the channels only."""
    return FastGenerator(width=24, n_blocks=8, n_blocks_half=1, expansion=2, **kwargs)
