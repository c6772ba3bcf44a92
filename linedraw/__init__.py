"""linedraw: turn photos into informative line drawings, and search photos with sketches."""
from __future__ import annotations

__version__ = "0.1.0"
