"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The discriminator sees real and generated images only through the same kind of random, differentiable
augmentation, so it cannot memorise a small set of real drawings, while the generator still gets gradients
through the augmentation. Apply `diff_augment` to every batch before a discriminator: real, fake (detached) in
the discriminator step and fake (not detached) in the generator step, each call with fresh random draws.

Policies (comma-separated, applied in the order given), for NCHW images in [0, 1]:

- `color`: per image, a brightness shift in [-0.25, 0.25], a saturation factor in [0, 2] (the distance to the
  per-pixel channel mean is scaled; skipped for 1-channel drawings) and a contrast factor in [0.5, 1.5] (the
  distance to the image mean is scaled), in that order. These are the paper's ranges with brightness halved,
  because its images span [-1, 1] and ours [0, 1]. No clamping, so gradients never vanish.
- `translation`: per image, an integer shift of up to 1/8 of the height and of the width, filled with `FILL`.
- `cutout`: per image, a rectangle of half the height and half the width, centred anywhere in the image
  (clipped at the border), set to `FILL`.
`FILL` is 0.5, the middle of our range, as the paper's zero is of its [-1, 1]. A fill of 0 would be solid ink on
a drawing: a quarter of every augmented drawing black, which the discriminator then judges instead of the
strokes, and the generator learns to fool it by drawing less.

All random numbers come from `generator` (drawn on its device), so a run seeded the same way, or resumed with
the generator's saved state, augments identically. The module lives with the models because it is part of
what a discriminator sees, configured by `model.diffaugment`; it imports nothing from losses or training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from linedraw.errors import UsageError

#: The known augmentations, in the paper's order.
POLICIES = ("color", "translation", "cutout")
#: Translation shifts by at most this fraction of each side.
TRANSLATION_RATIO = 1 / 8
#: Cutout fills a rectangle of this fraction of each side.
CUTOUT_RATIO = 1 / 2
#: What translation and cutout fill with: mid-grey, neither paper nor ink.
FILL = 0.5


def parse_policy(policy: str) -> tuple[str, ...]:
    """`"color,cutout"` -> `("color", "cutout")`; "" -> (); an unknown name is a UsageError naming `policy`."""
    names = tuple(part.strip() for part in policy.split(",") if part.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise UsageError(f"policy={policy!r}: unknown augmentation {unknown[0]!r}; choose from {', '.join(POLICIES)}")
    return names


def diff_augment(x: torch.Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a batch (B, C, H, W) differentiably with the comma-separated `policy`; "" returns `x` itself."""
    names = parse_policy(policy)
    if not names:
        return x
    if x.ndim != 4:
        raise UsageError(f"x must be a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    for name in names:
        x = _AUGMENTATIONS[name](x, generator)
    return x


def _uniform(x: torch.Tensor, generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn from `generator` on its device, moved to `x`'s device and dtype."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device).to(device=x.device, dtype=x.dtype)


def _integers(x: torch.Tensor, generator: torch.Generator | None, low: int, high: int, count: int) -> torch.Tensor:
    """`count` integers in [low, high] from `generator`, on `x`'s device."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(low, high + 1, (count,), generator=generator, device=device).to(x.device)


def _color(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    b = x.shape[0]
    x = x + (_uniform(x, generator, b, 1, 1, 1) - 0.5) * 0.5
    if x.shape[1] > 1:
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (_uniform(x, generator, b, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, generator, b, 1, 1, 1) + 0.5) + mean


def _translation(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    b, c, h, w = x.shape
    max_y, max_x = int(h * TRANSLATION_RATIO), int(w * TRANSLATION_RATIO)
    dy = _integers(x, generator, -max_y, max_y, b)
    dx = _integers(x, generator, -max_x, max_x, b)
    padded = F.pad(x, (max_x, max_x, max_y, max_y), value=FILL)
    # Output pixel (i, j) reads input pixel (i - dy, j - dx), i.e. padded (i - dy + max_y, j - dx + max_x).
    rows = torch.arange(h, device=x.device)[None, :] + (max_y - dy)[:, None]
    cols = torch.arange(w, device=x.device)[None, :] + (max_x - dx)[:, None]
    padded = padded.gather(2, rows[:, None, :, None].expand(b, c, h, padded.shape[3]))
    return padded.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _cutout(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    b, _, h, w = x.shape
    size_y, size_x = max(1, int(h * CUTOUT_RATIO)), max(1, int(w * CUTOUT_RATIO))
    top = _integers(x, generator, 0, h - 1, b) - size_y // 2
    left = _integers(x, generator, 0, w - 1, b) - size_x // 2
    rows = torch.arange(h, device=x.device)[None, :] - top[:, None]
    cols = torch.arange(w, device=x.device)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < size_y))[:, :, None] & ((cols >= 0) & (cols < size_x))[:, None, :]
    return torch.where(inside[:, None], torch.full_like(x, FILL), x)


_AUGMENTATIONS = {"color": _color, "translation": _translation, "cutout": _cutout}
