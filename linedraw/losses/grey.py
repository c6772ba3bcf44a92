"""Grey-wash penalty on the drawing: a pixel should be ink or paper, not light-grey wash, which the teacher losses
can reward (their features read faint texture) and which makes a drawing look less like a sketch. Not in the paper."""
from __future__ import annotations

import torch


def grey_loss(drawing: torch.Tensor) -> torch.Tensor:
    """Mean of 4 x (1 - x) over the drawing's pixels (values in [0, 1]): 0 where a pixel is pure ink (0) or paper
    (1), 1 at mid-grey; its gradient pushes a pixel towards whichever end is nearer."""
    if drawing.ndim != 4 or drawing.shape[1] != 1:
        raise ValueError(f"drawing must be (N, 1, H, W), got {tuple(drawing.shape)}")
    return (4.0 * drawing * (1.0 - drawing)).mean()
