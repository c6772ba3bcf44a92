"""Line-art finishing after the network: crisp 1-px centre lines, speck removal, a pen width in output pixels.

The network's strokes get wider (in pixels) as the processing resolution grows, and softer at their sides. These
functions take a drawing at the resolution the network ran at, find each stroke's centre line there, and draw it
again at the size the user wants with a pen of a fixed diameter, so a 400-px and a 4000-px photo get the same
pen. Drawings are (H, W) float arrays in [0, 1], dark lines (near 0) on white (1), as everywhere in linedraw.

- `thin(drawing, threshold, min_stroke, weak_threshold)` -> bool skeleton: line pixels (darker than `threshold`,
  plus the pixels darker than `weak_threshold` connected to them: hysteresis, as in Canny's edge detector, so a
  stroke that fades to grey along its length stays whole) less the non-maxima between strokes (non-maximum
  suppression across the stroke: pixels with a darker neighbour on both sides along the direction of strongest
  curvature of the smoothed darkness, from its Hessian, i.e. the valley where two strokes merged at the
  threshold), then thinned to their one-pixel centre lines (scikit-image's skeletonize), which keeps stroke ends
  and junctions; strokes whose centre line has fewer than `min_stroke` pixels are dropped.
- `render_strokes(skeleton, out_size, width_px, antialias)` -> drawing: the skeleton scaled to `out_size`
  (neighbouring pixels joined by segments, so upscaling leaves no gaps), drawn with a disc of diameter
  `width_px` output pixels (distance transform of the scaled centre line, anti-aliased over one pixel).
- `remove_specks(drawing, min_stroke, threshold)`: whitens grey strokes whose centre line is shorter than
  `min_stroke` px, leaving the others untouched.
- `finish(drawing, ...)` -> PIL "L": the one call a converter makes after the network.

scikit-image and SciPy come with the `lineart` extra (`pip install 'linedraw[lineart]'`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from linedraw.errors import MissingDependencyError, UsageError

#: Pixels lighter than the threshold but darker than this still belong to a stroke they touch (hysteresis).
WEAK_THRESHOLD = 0.8
#: Smoothing (in pixels at the processing resolution) of the darkness before its Hessian gives the direction
#: across each stroke; one pixel steadies the direction without merging strokes two pixels apart.
NMS_SIGMA = 1.0
#: A pixel is a valley between strokes only if its neighbours on both sides are darker by more than this, so
#: the noisy flat middle of a wide solid stroke stays whole instead of being split.
NMS_MARGIN = 0.02
#: Holes of at most this many pixels left inside a stroke once the valleys are removed are filled before
#: thinning (thinning would turn each into a little loop).
MAX_HOLE_PIXELS = 8

#: The 8-neighbourhood offsets (dr, dc) that join skeleton pixels: right, down, down-right, down-left.
_JOIN_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


def thin(
    drawing: np.ndarray, threshold: float = 0.5, min_stroke: int = 0, weak_threshold: float | None = WEAK_THRESHOLD
) -> np.ndarray:
    """(H, W) drawing in [0, 1], dark on white -> (H, W) bool 1-px centre lines of its strokes.

    Line pixels are those darker than `threshold` and, connected to them, those darker than `weak_threshold`
    (None: `threshold` alone); see the module docstring. `min_stroke` > 0 drops connected strokes whose centre
    line has fewer pixels than that (specks).
    """
    drawing = as_drawing(drawing)
    _check_threshold(threshold)
    min_stroke = _check_min_stroke(min_stroke)
    if weak_threshold is not None and not (
        isinstance(weak_threshold, (int, float)) and threshold <= weak_threshold < 1.0
    ):
        raise UsageError(f"weak_threshold must be None or in [threshold, 1) = [{threshold}, 1), "
                         f"got {weak_threshold!r}")
    ndimage, measure, morphology = _libs()
    lines = drawing < threshold
    if weak_threshold is not None and weak_threshold > threshold and lines.any():
        from skimage.filters import apply_hysteresis_threshold

        lines = apply_hysteresis_threshold(1.0 - drawing, 1.0 - weak_threshold, 1.0 - threshold)
    if not lines.any():
        return lines
    strokes = _fill_holes(lines & ~_valleys(1.0 - drawing, ndimage), measure)
    skeleton = morphology.skeletonize(strokes)
    if min_stroke:
        skeleton = drop_short_strokes(skeleton, min_stroke)
    return skeleton


_thin = thin  # `finish` has an argument named `thin`


def drop_short_strokes(skeleton: np.ndarray, min_stroke: int) -> np.ndarray:
    """The skeleton without its 8-connected pieces of fewer than `min_stroke` pixels (a 1-px line's pixel count
    is its length)."""
    min_stroke = _check_min_stroke(min_stroke)
    _, measure, _ = _libs()
    labels, count = measure.label(skeleton, connectivity=2, return_num=True)
    if not count:
        return skeleton.copy()
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_stroke
    keep[0] = False
    return keep[labels]


def remove_specks(drawing: np.ndarray, min_stroke: int, threshold: float = 0.5) -> np.ndarray:
    """The drawing with every stroke (8-connected line pixels) whose centre line is shorter than `min_stroke`
    pixels set to white; other pixels are unchanged."""
    drawing = as_drawing(drawing)
    _check_threshold(threshold)
    min_stroke = _check_min_stroke(min_stroke)
    if not min_stroke:
        return drawing.copy()
    _, measure, morphology = _libs()
    lines = drawing < threshold
    labels, count = measure.label(lines, connectivity=2, return_num=True)
    if not count:
        return drawing.copy()
    lengths = np.bincount(labels[morphology.skeletonize(lines)], minlength=count + 1)
    lengths = np.maximum(lengths, 1)  # a stroke too small to have a skeleton still has a length of 1
    speck = lengths < min_stroke
    speck[0] = False
    out = drawing.copy()
    out[speck[labels]] = 1.0
    return out


def render_strokes(
    skeleton: np.ndarray, out_size: tuple[int, int] | None = None, width_px: float = 2.0, antialias: bool = True
) -> np.ndarray:
    """Draw a bool skeleton (h, w) as strokes `width_px` output pixels wide in an image of `out_size` (W, H).

    Returns a float32 (H, W) drawing in [0, 1], dark on white. The skeleton is scaled to the output (pixel
    centres map to pixel centres), its neighbouring pixels joined by straight segments, and every output pixel
    within `width_px / 2` of that centre line is ink; `antialias` shades the one-pixel rim by its distance.
    """
    skeleton = np.asarray(skeleton)
    if skeleton.ndim != 2:
        raise UsageError(f"skeleton must be a 2-D array, got shape {skeleton.shape}")
    skeleton = skeleton.astype(bool, copy=False)
    h, w = skeleton.shape
    out_w, out_h = check_size(out_size, (w, h), "out_size")
    if not (isinstance(width_px, (int, float)) and np.isfinite(width_px) and width_px > 0):
        raise UsageError(f"width_px must be a positive number of pixels, got {width_px!r}")
    ndimage, _, _ = _libs()
    centre = centre_line(skeleton, (out_w, out_h))
    if not centre.any():
        return np.ones((out_h, out_w), np.float32)
    distance = ndimage.distance_transform_edt(~centre).astype(np.float32)
    radius = np.float32(width_px / 2.0)
    if antialias:
        ink = np.clip(radius + 0.5 - distance, 0.0, 1.0)
    else:
        ink = (distance <= radius).astype(np.float32)
    ink[centre] = 1.0  # even the finest pen leaves its centre line visible
    return 1.0 - ink


def centre_line(skeleton: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """The bool skeleton (h, w) scaled to an (H, W) bool mask of `out_size` (W, H), kept connected: every pair
    of 8-neighbouring skeleton pixels becomes a segment sampled at least twice per output pixel."""
    out_w, out_h = out_size
    h, w = skeleton.shape
    sy, sx = out_h / h, out_w / w
    rows, cols = np.nonzero(skeleton)
    starts = [np.stack([rows, cols], 1).astype(np.float64)]
    ends = [starts[0]]  # single pixels: a segment of length 0
    for dr, dc in _JOIN_OFFSETS:
        r1, c1 = rows + dr, cols + dc
        inside = (r1 < h) & (c1 >= 0) & (c1 < w)
        joined = np.zeros_like(inside)
        joined[inside] = skeleton[r1[inside], c1[inside]]
        starts.append(np.stack([rows[joined], cols[joined]], 1).astype(np.float64))
        ends.append(np.stack([r1[joined], c1[joined]], 1).astype(np.float64))
    a, b = np.concatenate(starts), np.concatenate(ends)
    scale = np.array([sy, sx])
    a, b = (a + 0.5) * scale - 0.5, (b + 0.5) * scale - 0.5
    steps = int(np.ceil(2.0 * max(sy, sx) * np.sqrt(2.0))) + 1  # segments are at most one diagonal pixel long
    t = np.linspace(0.0, 1.0, steps)[None, :, None]
    points = np.rint(a[:, None, :] + t * (b - a)[:, None, :]).reshape(-1, 2).astype(np.int64)
    points[:, 0] = points[:, 0].clip(0, out_h - 1)
    points[:, 1] = points[:, 1].clip(0, out_w - 1)
    mask = np.zeros((out_h, out_w), bool)
    mask[points[:, 0], points[:, 1]] = True
    return mask


def finish(
    drawing: Any,
    *,
    thin: bool = False,
    min_stroke: int = 0,
    stroke_width: float | None = None,
    out_size: tuple[int, int] | None = None,
    threshold: float = 0.5,
    weak_threshold: float | None = WEAK_THRESHOLD,
    antialias: bool = True,
) -> Image.Image:
    """The network's drawing (PIL, (H, W) or (1, H, W) array/tensor in [0, 1]) -> an "L" drawing of `out_size`.

    Pass the drawing at the resolution the network ran at and the photo's size as `out_size` (W, H), so the pen
    does not change with the processing size. `stroke_width` (output px) redraws every centre line with that pen
    (it implies `thin`); `thin` alone gives 1-px lines at the output size; `min_stroke` drops strokes shorter
    than that (px at the processing resolution); with none of them the drawing is only resized. `threshold` and
    `weak_threshold` say which pixels are lines (see `thin`).
    """
    array = as_drawing(drawing)
    h, w = array.shape
    out_w, out_h = check_size(out_size, (w, h), "out_size")
    if stroke_width is not None and not (
        isinstance(stroke_width, (int, float)) and np.isfinite(stroke_width) and stroke_width > 0
    ):
        raise UsageError(f"stroke_width must be a positive number of pixels, got {stroke_width!r}")
    if stroke_width is not None:
        skeleton = _thin(array, threshold, min_stroke, weak_threshold)
        return _to_pil(render_strokes(skeleton, (out_w, out_h), float(stroke_width), antialias=antialias))
    if thin:
        skeleton = _thin(array, threshold, min_stroke, weak_threshold)
        if (out_w, out_h) != (w, h):  # scaled centre lines step in pairs of pixels: thin them again at the output size
            _, _, morphology = _libs()
            skeleton = morphology.skeletonize(centre_line(skeleton, (out_w, out_h)))
        return _to_pil(np.where(skeleton, 0.0, 1.0).astype(np.float32))
    if min_stroke:
        array = remove_specks(array, min_stroke, threshold)
    image = _to_pil(array)
    if (out_w, out_h) != (w, h):
        image = image.resize((out_w, out_h), Image.Resampling.BICUBIC if (out_w > w) else Image.Resampling.LANCZOS)
    return image


def as_drawing(drawing: Any) -> np.ndarray:
    """A PIL image, numpy array or torch tensor ((H, W) or (1, H, W); uint8 or float in [0, 1]) as a float32
    (H, W) array in [0, 1]."""
    if isinstance(drawing, Image.Image):
        array = np.asarray(drawing.convert("L"), dtype=np.float32) / 255.0
        return array
    if hasattr(drawing, "detach"):  # a torch tensor, without importing torch here
        drawing = drawing.detach().float().cpu().numpy()
    array = np.asarray(drawing)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise UsageError(f"drawing must be (H, W) or (1, H, W), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise UsageError(f"drawing must be uint8 or float in [0, 1], got {array.dtype}")
    return np.clip(np.nan_to_num(array.astype(np.float32, copy=False), nan=1.0), 0.0, 1.0)


# ----------------------------------------------------------------------------------------- helpers


def _valleys(darkness: np.ndarray, ndimage) -> np.ndarray:
    """Pixels that are not a maximum across the strokes around them but a minimum between two of them: on both
    sides along the direction of most positive curvature of the smoothed darkness (from its Hessian), a pixel one
    or two steps away is darker by more than `NMS_MARGIN`. Removing them splits strokes that merged at the
    threshold; the sides of a single stroke fall off monotonically, so no single stroke is cut."""
    from skimage.feature import hessian_matrix

    smooth = ndimage.gaussian_filter(darkness.astype(np.float64), NMS_SIGMA, mode="nearest")
    hrr, hrc, hcc = hessian_matrix(darkness.astype(np.float64), sigma=NMS_SIGMA, mode="nearest", order="rc",
                                   use_gaussian_derivatives=False)
    # The largest eigenvalue's axis is at 0.5 * atan2(2 b, a - c) from the row axis, quantised to the four
    # neighbour directions. The upward curvature must outweigh the downward one (positive trace): a valley
    # between strokes, not a lighter spot along one stroke (there the curvature across the stroke dominates).
    across = 0.5 * np.arctan2(2.0 * hrc, hrr - hcc)
    direction = np.rint((across % np.pi) / (np.pi / 4.0)).astype(np.int64) % 4
    concave = hrr + hcc > 0
    padded = np.pad(smooth, 2, mode="edge")
    h, w = smooth.shape

    def shifted(dr: int, dc: int) -> np.ndarray:
        return padded[2 + dr : 2 + dr + h, 2 + dc : 2 + dc + w]

    valleys = np.zeros((h, w), bool)
    for k, (dr, dc) in enumerate(((1, 0), (1, 1), (0, 1), (1, -1))):
        # one or two pixels out on each side, so a valley two pixels wide (strokes an even distance apart) counts
        ahead = np.maximum(shifted(dr, dc), shifted(2 * dr, 2 * dc))
        behind = np.maximum(shifted(-dr, -dc), shifted(-2 * dr, -2 * dc))
        valleys |= (direction == k) & (np.minimum(ahead, behind) > smooth + NMS_MARGIN)
    return valleys & concave


def _fill_holes(mask: np.ndarray, measure) -> np.ndarray:
    """`mask` with its background pieces (4-connected) of at most `MAX_HOLE_PIXELS` pixels filled."""
    labels, count = measure.label(~mask, connectivity=1, return_num=True)
    if not count:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    hole = sizes <= MAX_HOLE_PIXELS
    hole[0] = False
    return mask | hole[labels]


def _to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")


def _check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
        raise UsageError(f"threshold must be between 0 and 1, got {threshold!r}")


def _check_min_stroke(min_stroke: int) -> int:
    if isinstance(min_stroke, bool) or not isinstance(min_stroke, (int, np.integer)) or min_stroke < 0:
        raise UsageError(f"min_stroke must be a whole number of pixels >= 0, got {min_stroke!r}")
    return int(min_stroke)


def check_size(size: tuple[int, int] | None, default: tuple[int, int], name: str) -> tuple[int, int]:
    """`size` as (W, H) positive ints, `default` when None; a UsageError naming `name` otherwise."""
    if size is None:
        return default
    try:
        width, height = size
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be (width, height), got {size!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise UsageError(f"{name} must be two positive whole numbers of pixels, got {size!r}")
    return int(width), int(height)


def _libs():
    """SciPy's ndimage and scikit-image's measure and morphology, or a MissingDependencyError saying what to
    install."""
    try:
        from scipy import ndimage
        from skimage import measure, morphology
    except ImportError as exc:
        raise MissingDependencyError(
            f"line-art finishing needs scikit-image and SciPy ({exc.name} is missing): "
            "pip install 'linedraw[lineart]'"
        ) from None
    return ndimage, measure, morphology
