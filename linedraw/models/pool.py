"""CycleGAN's image history buffer: the discriminator sometimes sees older fakes, which steadies training."""
from __future__ import annotations

from typing import Any

import torch


class ImagePool:
    """Keeps up to `size` past generated images; `size=0` turns the pool off (query returns its input).

    Once full, each queried image is, with probability 1/2, swapped for a random stored one. The pool has
    its own RNG, saved in `state_dict()`, so a resumed run draws exactly what an uninterrupted one would.
    """

    def __init__(self, size: int = 0, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"image pool size must be >= 0, got {size}")
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch of the same shape mixing `images` (detached) with stored history."""
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(1, generator=self.generator).item() < 0.5:
                index = int(torch.randint(self.size, (1,), generator=self.generator).item())
                out.append(self.images[index].to(images.device, copy=True))
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        """Stored images (stacked on the CPU) and the RNG state."""
        images = torch.stack(self.images).cpu() if self.images else torch.empty(0)
        return {"size": self.size, "images": images, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned; the pool size must match."""
        if state["size"] != self.size:
            raise ValueError(f"image pool state has size {state['size']}, this pool has size {self.size}")
        self.images = list(state["images"].unbind(0)) if state["images"].numel() else []
        self.generator.set_state(state["rng"])
