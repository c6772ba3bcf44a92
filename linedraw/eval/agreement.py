"""Pixel agreement between two sets of drawings of the same photos (a distilled student against its teacher)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from linedraw.errors import InvalidFileError


def drawing_agreement(a: np.ndarray, b: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Compare two drawings in [0, 1] (dark lines on white) of one photo.

    Returns `mae` (mean absolute difference), `agreement` (fraction of pixels on the same side of `threshold`)
    and `line_iou` (intersection over union of the pixels darker than `threshold`; 1 when neither has lines).
    """
    if a.shape != b.shape:
        raise InvalidFileError(f"drawings differ in shape: {a.shape} vs {b.shape}")
    line_a, line_b = a < threshold, b < threshold
    union = np.logical_or(line_a, line_b).sum()
    return {
        "mae": float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean()),
        "agreement": float((line_a == line_b).mean()),
        "line_iou": float(np.logical_and(line_a, line_b).sum() / union) if union else 1.0,
    }


@dataclass
class AgreementReport:
    """Per-metric means over the matched drawings, plus what could not be compared."""

    count: int = 0
    means: dict[str, float] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def folder_agreement(a_root: str | os.PathLike, b_root: str | os.PathLike, threshold: float = 0.5) -> AgreementReport:
    """`drawing_agreement` averaged over drawings matched by relative path (or unique stem) in two folders."""
    from PIL import Image

    from linedraw.eval.pairs import index_images, pair_images
    from linedraw.images import ImageError, open_image

    pairing = pair_images(index_images(a_root), index_images(b_root))
    report = AgreementReport(unmatched=[str(p) for p in pairing.photos_without_drawing + pairing.drawings_without_photo])
    totals: dict[str, float] = {}
    for _, path_a, path_b in pairing.pairs:
        try:
            a, b = open_image(path_a, mode="L"), open_image(path_b, mode="L")
        except ImageError as err:
            report.errors.append(str(err))
            continue
        if a.size != b.size:  # drawn at another size: compare at the first folder's
            b = b.resize(a.size, Image.Resampling.BILINEAR)
        scores = drawing_agreement(np.asarray(a, np.float32) / 255.0, np.asarray(b, np.float32) / 255.0, threshold)
        for key, value in scores.items():
            totals[key] = totals.get(key, 0.0) + value
        report.count += 1
    report.means = {key: value / report.count for key, value in totals.items()} if report.count else {}
    return report
