"""linedraw: turn photos into informative line drawings, and search photos with sketches."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from linedraw.convert import Converter


def load(name_or_path: str = "contour", device: str = "auto", **options: Any) -> "Converter":
    """A ready `Converter` from a shipped checkpoint name, a .safetensors file or a training output dir.

    `options` go to `Converter` (size, max_pixels, batch_size, half, invert, threshold, line_weight, ...).
    Torch is imported here, not at `import linedraw`, so the package stays light to import.
    """
    from linedraw.checkpoint import load_generator
    from linedraw.convert import Converter

    model, config = load_generator(name_or_path)
    return Converter(model, config, device=device, **options)
