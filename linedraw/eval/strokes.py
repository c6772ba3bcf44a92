"""Stroke quality of drawings: how dotted, broken or checkerboarded the lines are, as numbers.

Measured on one drawing in [0, 1] (dark lines on white); line pixels are those darker than `threshold`, grouped
into 8-connected components ("strokes"):

- `speck_fraction`: the fraction of line pixels that lie in components of at most `speck_max` pixels (isolated
  specks; a dotted line is made of them). 0 when the drawing has no line pixels.
- `mean_stroke_length`: the mean, over components, of the component's skeleton length in pixels (the number of
  pixels of the one-pixel-wide skeleton of the line mask inside it, at least 1), so a thick line counts its
  length, not its area. It is measured in pixels of the drawing as given: compare drawings of the same size.
  0 when there are no line pixels.
- `strokes`: the number of components.
- `checkerboard_energy`: of the grey drawing's spectral energy outside DC (2-D FFT, `|F|^2`), the share at the
  three stride-2 frequencies (pi, 0), (0, pi) and (pi, pi), i.e. the Nyquist bins, where the pattern of a
  stride-2 transposed convolution lands. 1 for a one-pixel checkerboard, near 0 for smooth images; drawings of
  odd height or width lose their last row or column (odd sizes have no Nyquist bin). 0 for a flat image.

Components and skeletons come from scikit-image (the `eval` extra).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from linedraw.errors import MissingDependencyError, MissingFileError, UsageError

#: Components of at most this many pixels count as specks.
SPECK_MAX_PIXELS = 4
#: The scores of one drawing, in report order.
SCORE_NAMES = ("speck_fraction", "mean_stroke_length", "strokes", "checkerboard_energy")


def checkerboard_energy(grey: np.ndarray) -> float:
    """Share of the non-DC spectral energy of a 2-D image at the Nyquist bins (see the module docstring)."""
    if grey.ndim != 2:
        raise UsageError(f"grey must be a 2-D image, got shape {grey.shape}")
    h, w = grey.shape[0] // 2 * 2, grey.shape[1] // 2 * 2
    if h < 2 or w < 2:
        raise UsageError(f"grey must be at least 2x2 pixels, got {grey.shape[0]}x{grey.shape[1]}")
    power = np.abs(np.fft.fft2(grey[:h, :w].astype(np.float64))) ** 2
    total = power.sum() - power[0, 0]
    if total <= 1e-12 * h * w:
        return 0.0
    nyquist = power[h // 2, 0] + power[0, w // 2] + power[h // 2, w // 2]
    return float(nyquist / total)


def stroke_scores(drawing: np.ndarray, threshold: float = 0.5, speck_max: int = SPECK_MAX_PIXELS) -> dict[str, float]:
    """The scores of the module docstring for one drawing (H, W) in [0, 1], dark lines on white."""
    if drawing.ndim != 2:
        raise UsageError(f"drawing must be a 2-D image, got shape {drawing.shape}")
    if not 0.0 < threshold < 1.0:
        raise UsageError(f"threshold={threshold} must be between 0 and 1")
    if speck_max < 1:
        raise UsageError(f"speck_max={speck_max} must be at least 1")
    measure, morphology = _skimage()
    lines = drawing < threshold
    labels, count = measure.label(lines, connectivity=2, return_num=True)
    scores = {"speck_fraction": 0.0, "mean_stroke_length": 0.0, "strokes": float(count),
              "checkerboard_energy": checkerboard_energy(drawing)}
    if count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        scores["speck_fraction"] = float(sizes[sizes <= speck_max].sum() / sizes.sum())
        skeleton = morphology.skeletonize(lines)
        lengths = np.bincount(labels[skeleton], minlength=count + 1)[1:]
        scores["mean_stroke_length"] = float(np.maximum(lengths, 1).mean())
    return scores


@dataclass
class StrokeReport:
    """Scores per drawing (by path relative to the folder), their means, and the files that could not be read."""

    threshold: float
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form: threshold, count, means, per-drawing rows, errors."""
        return {"threshold": self.threshold, "count": len(self.rows), "means": self.means, "drawings": self.rows,
                "errors": self.errors}


def evaluate_strokes(drawings: str | os.PathLike, threshold: float = 0.5) -> StrokeReport:
    """`stroke_scores` of every image under the folder `drawings`, and their means over the drawings."""
    from pathlib import Path

    from linedraw.images import ImageError, list_images, open_image

    if not Path(drawings).is_dir():
        raise MissingFileError(f"{drawings}: not a folder")
    if not 0.0 < threshold < 1.0:
        raise UsageError(f"threshold={threshold} must be between 0 and 1")
    _skimage()
    report = StrokeReport(threshold=threshold)
    for path, relative in list_images([drawings]):
        try:
            grey = np.asarray(open_image(path, mode="L"), np.float32) / 255.0
        except ImageError as err:
            report.errors.append(str(err))
            continue
        if min(grey.shape) < 2:
            report.errors.append(f"{path}: smaller than 2x2 pixels")
            continue
        report.rows[relative.as_posix()] = stroke_scores(grey, threshold)
    if report.rows:
        report.means = {name: float(np.mean([row[name] for row in report.rows.values()])) for name in SCORE_NAMES}
    return report


def _skimage():
    """scikit-image's `measure` and `morphology`, or a MissingDependencyError saying what to install."""
    try:
        from skimage import measure, morphology
    except ImportError as exc:
        raise MissingDependencyError(
            f"stroke scores need scikit-image ({exc}); install: pip install 'linedraw[eval]'"
        ) from exc
    return measure, morphology
