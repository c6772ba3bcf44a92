"""PatchGAN discriminator: scores overlapping patches of an image as real or fake (LSGAN, no sigmoid)."""
from __future__ import annotations

import torch
import torch.nn as nn

from linedraw.models import register_model


@register_model("patch_discriminator")
class PatchDiscriminator(nn.Module):
    """`n_layers` stride-2 4x4 convolutions, then two stride-1 ones; n_layers=3 sees 70x70 patches.

    Returns raw scores (B, 1, H', W'), one per patch, for the least-squares GAN objective.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        if in_channels < 1 or ndf < 1 or n_layers < 1:
            raise ValueError(
                f"invalid discriminator size: in_channels={in_channels}, ndf={ndf}, n_layers={n_layers}"
            )
        self.in_channels = in_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        channels = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(channels, out, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(out),
                nn.LeakyReLU(0.2, True),
            ]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the input patch that one output score sees (70 for n_layers=3)."""
        field = 1
        for layer in reversed([m for m in self.model if isinstance(m, nn.Conv2d)]):
            field = (field - 1) * layer.stride[0] + layer.kernel_size[0]
        return field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected a (B, {self.in_channels}, H, W) tensor, got shape {tuple(x.shape)}")
        return self.model(x)
