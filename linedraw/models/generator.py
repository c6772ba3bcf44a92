"""ResNet generator of CycleGAN / Informative Drawings: photo (3 ch) -> drawing (1 ch) and back.

Two ways back up from the 1/4-scale bottleneck: `upsample="transpose"` (stride-2 transposed convolutions, the
paper's and every shipped checkpoint's) and `upsample="resize"` (nearest-neighbour x2 then a 3x3 convolution,
Odena et al. 2016, "Deconvolution and checkerboard artifacts": every output pixel gets the same number of kernel
taps, so the stride-2 checkerboard cannot appear). `resnet_generator_resize` is the registered resize variant.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from linedraw.models import register_model

#: Smallest side: the 1/4-size bottleneck needs 2 pixels for its reflection padding.
MIN_SIZE = 8
#: The `upsample` choices of `ResnetGenerator`.
UPSAMPLE_MODES = ("transpose", "resize")


class ResidualBlock(nn.Module):
    """Two reflection-padded 3x3 convolutions with instance norm and a skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


@register_model("resnet_generator")
class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 downsamplings, `n_blocks` residual blocks, two upsamplings, c7s1-out, sigmoid.

    Outputs are in [0, 1]. Input H and W must be multiples of `size_multiple` and at least 8 (use
    `pad_to_multiple` for other sizes). `upsample` is "transpose" (transposed convolutions) or "resize"
    (nearest-neighbour x2 + reflection-padded 3x3 convolution); see the module docstring.
    """

    #: Input H and W must be divisible by this (two stride-2 downsamplings).
    size_multiple: int = 4

    def __init__(self, in_channels: int = 3, out_channels: int = 1, ngf: int = 64, n_blocks: int = 3,
                 upsample: str = "transpose") -> None:
        super().__init__()
        if min(in_channels, out_channels, ngf) < 1 or n_blocks < 0:
            raise ValueError(
                f"invalid generator size: in_channels={in_channels}, out_channels={out_channels}, "
                f"ngf={ngf}, n_blocks={n_blocks}"
            )
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample={upsample!r} must be one of {', '.join(UPSAMPLE_MODES)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.ngf, self.n_blocks, self.upsample = ngf, n_blocks, upsample
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(inplace=True),
        ]
        channels = ngf
        for _ in range(2):
            layers += [
                nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1),
                nn.InstanceNorm2d(channels * 2),
                nn.ReLU(inplace=True),
            ]
            channels *= 2
        layers += [ResidualBlock(channels) for _ in range(n_blocks)]
        for _ in range(2):
            if upsample == "transpose":
                up: list[nn.Module] = [
                    nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1, output_padding=1)
                ]
            else:
                up = [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                      nn.Conv2d(channels, channels // 2, 3)]
            layers += [
                *up,
                nn.InstanceNorm2d(channels // 2),
                nn.ReLU(inplace=True),
            ]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, out_channels, 7), nn.Sigmoid()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected a (B, {self.in_channels}, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(
                f"input height and width must be multiples of {self.size_multiple}, got {h}x{w}; "
                "pad with linedraw.models.pad_to_multiple(x, model.size_multiple) and crop the output back with crop_to"
            )
        if h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(f"input height and width must be at least {MIN_SIZE}, got {h}x{w}")
        return self.model(x)

    def adapt_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` of this generator with the other `upsample` mode, rewritten for this one (else as it is).

        The two layouts hold the same layers at other indices, so every tensor moves by position. A transposed
        kernel becomes the resize convolution's by swapping in/out channels and flipping it: nearest-neighbour
        upsampling is zero insertion followed by a 2x2 box filter, so the resize layer then draws what the
        transposed one drew, box-filtered, which removes the stride-2 checkerboard and keeps the rest; instance
        norm takes out the box's gain. Going back (resize to transpose) uses the same rewrite."""
        other = "resize" if self.upsample == "transpose" else "transpose"
        with torch.device("meta"):
            source = ResnetGenerator(self.in_channels, self.out_channels, self.ngf, self.n_blocks, other)
        expected = {k: tuple(v.shape) for k, v in source.state_dict().items()}
        if {k: tuple(v.shape) for k, v in state.items()} != expected:
            return dict(state)
        pairs = zip(_weighted(source), _weighted(self))
        adapted: dict[str, torch.Tensor] = {}
        for (src_name, src), (dst_name, dst) in pairs:
            weight = state[f"{src_name}.weight"]
            if isinstance(src, nn.ConvTranspose2d) != isinstance(dst, nn.ConvTranspose2d):
                weight = weight.transpose(0, 1).flip(-2, -1)
            adapted[f"{dst_name}.weight"] = weight.contiguous()
            adapted[f"{dst_name}.bias"] = state[f"{src_name}.bias"]
        return adapted


def _weighted(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The convolutions of `net` in order, by their state-dict prefix."""
    return [(name, m) for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


@register_model("resnet_generator_resize")
def resnet_generator_resize(**kwargs) -> ResnetGenerator:
    """`ResnetGenerator` with resize-convolution upsampling (`upsample="resize"`), registered by name."""
    return ResnetGenerator(upsample="resize", **kwargs)


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the bottom/right of an NCHW tensor so H and W are multiples of `multiple` (a model's `size_multiple`).

    Returns the padded tensor and the original (h, w) for `crop_to`. Reflect padding needs the pad to be
    smaller than the image side; tiny images fall back to replicate padding.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (h, w)
    if mode == "reflect" and (pad_h >= h or pad_w >= w):
        mode = "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the bottom/right padding added by `pad_to_multiple` back off."""
    h, w = size
    return x[..., :h, :w]
