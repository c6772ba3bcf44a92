"""Segmentation loss: a U-Net trained jointly should segment the drawing as the photo's mask says."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from linedraw.models.generator import crop_to, pad_to_multiple

#: segmentation_models_pytorch encoders downsample 5 times, so inputs are padded to a multiple of 32.
UNET_MULTIPLE = 32


def build_unet(
    encoder: str, num_classes: int, encoder_weights: str | None = None, in_channels: int = 3, **unet_kwargs
) -> nn.Module:
    """A segmentation_models_pytorch U-Net (e.g. encoder "resnet18") predicting `num_classes` logits.

    `encoder_weights=None` starts from random weights (nothing is downloaded); extra keyword arguments
    (`encoder_depth`, `decoder_channels`, ...) go to `smp.Unet`.
    """
    import segmentation_models_pytorch as smp

    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return smp.Unet(
        encoder_name=encoder,
        encoder_weights=encoder_weights,
        in_channels=in_channels,
        classes=num_classes,
        **unet_kwargs,
    )


def _input_channels(net: nn.Module) -> int:
    """Channels the network's first convolution takes."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError(f"cannot tell the input channels of {type(net).__name__}: it has no Conv2d")


class SegmentationLoss(nn.Module):
    """Pixel-wise cross-entropy of `net(drawing)` against the photo's mask (B, H, W) of class indices.

    Pixels equal to `ignore_index` and rows whose `has_mask` is False contribute nothing; the drawing is
    repeated to 3 channels when the net takes 3, and padded (replicate) to a multiple of 32 and cropped back.
    """

    def __init__(self, net: nn.Module, ignore_index: int = 255) -> None:
        super().__init__()
        self.net = net
        self.ignore_index = ignore_index
        self.in_channels = _input_channels(net)

    def forward(self, drawing: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over labelled pixels; a batch with none gives a zero that still carries grad.

        Every row still runs through the net, so data-parallel processes stay in step.
        """
        if mask.shape != (drawing.shape[0], *drawing.shape[-2:]) or has_mask.shape != (drawing.shape[0],):
            raise ValueError(
                f"segmentation loss expects mask (B,H,W) and has_mask (B,) for drawing {tuple(drawing.shape)}, "
                f"got mask {tuple(mask.shape)} and has_mask {tuple(has_mask.shape)}"
            )
        images = drawing
        if images.shape[1] == 1 and self.in_channels == 3:
            images = images.expand(-1, 3, -1, -1)
        padded, size = pad_to_multiple(images, UNET_MULTIPLE, mode="replicate")
        logits = crop_to(self.net(padded), size)
        has_mask = has_mask.to(device=mask.device, dtype=torch.bool)
        target = torch.where(has_mask[:, None, None], mask, torch.full_like(mask, self.ignore_index)).long()
        total = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
        labelled = (target != self.ignore_index).sum()
        return total / labelled.clamp(min=1)
