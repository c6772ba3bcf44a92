"""Least-squares GAN objective (Mao et al. 2017), as used by CycleGAN and Informative Drawings."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lsgan_generator_loss(pred_fake: torch.Tensor) -> torch.Tensor:
    """Generator side: push the discriminator's scores on fakes towards 1 (mean squared error)."""
    return F.mse_loss(pred_fake, torch.ones_like(pred_fake))


def lsgan_discriminator_loss(pred_real: torch.Tensor, pred_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator side: real scores towards 1, fake scores towards 0, halved as in CycleGAN.

    Pass `pred_fake` computed on detached fakes so the generator gets no gradient from this loss.
    """
    real = F.mse_loss(pred_real, torch.ones_like(pred_real))
    fake = F.mse_loss(pred_fake, torch.zeros_like(pred_fake))
    return 0.5 * (real + fake)
