"""SVG line art: the centre lines of a drawing's strokes as plain `<path>` elements, for plotters, cutters and
vector editors.

`to_svg(skeleton, size, stroke_width, tolerance)` takes the bool skeleton that `linedraw.lineart.thin` finds at the
processing resolution and writes one `<path>` per connected stroke: each branch between stroke ends and junctions
is a polyline (skan walks the skeleton graph), scaled to `size` (the photo's), simplified to within `tolerance`
output pixels (Ramer-Douglas-Peucker, scikit-image's `approximate_polygon`), inside one `<g>` that sets the pen
(black stroke, round caps and joins, no fill; no filters). The `<svg>` has width, height and viewBox of `size`,
so one SVG unit is one photo pixel.

skan and scikit-image come with the `svg` extra (`pip install 'linedraw[svg]'`).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np

from linedraw.errors import MissingDependencyError, UsageError

SVG_NAMESPACE = "http://www.w3.org/2000/svg"
#: Coordinates are written to this many decimals of an output pixel.
DECIMALS = 1


def check_svg_options(*, invert: bool = False, line_weight: int = 0) -> None:
    """Raise a UsageError naming the argument if an option that only makes sense for raster output is set:
    `invert` (SVG strokes are black on a transparent page) or `line_weight` (use `stroke_width`)."""
    if invert:
        raise UsageError("invert=True cannot be used with SVG output: SVG strokes are drawn black on a "
                         "transparent page (recolour them in the editor)")
    if line_weight:
        raise UsageError(f"line_weight={line_weight} cannot be used with SVG output: set stroke_width instead")


def trace(
    skeleton: np.ndarray, size: tuple[int, int] | None = None, tolerance: float = 1.0
) -> list[list[np.ndarray]]:
    """The skeleton's strokes as polylines: one list per 8-connected stroke, of (N, 2) float arrays of (x, y)
    points in the coordinates of an image of `size` (W, H) (pixel centres at +0.5), simplified to `tolerance`.

    A branch runs between stroke ends and junctions (a closed loop starts and ends at the same point); a lone
    pixel is a single point.
    """
    skeleton = _check_skeleton(skeleton)
    h, w = skeleton.shape
    out_w, out_h = _check_size(size, (w, h))
    if not (isinstance(tolerance, (int, float)) and np.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
    skan, measure = _libs()
    labels, count = measure.label(skeleton, connectivity=2, return_num=True)
    strokes: list[list[np.ndarray]] = [[] for _ in range(count)]
    if not count:
        return []
    scale = np.array([out_w / w, out_h / h])
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    for label in np.flatnonzero(sizes == 1):  # lone pixels: skan's graph has no branch for them
        if label == 0:
            continue
        r, c = np.argwhere(labels == label)[0]
        strokes[label - 1].append((np.array([[c, r]], np.float64) + 0.5) * scale)
    if (sizes[1:] > 1).any():
        graph = skan.Skeleton(skeleton & (sizes[labels] > 1))
        for index in range(graph.n_paths):
            rc = graph.path_coordinates(index)
            xy = (rc[:, ::-1].astype(np.float64) + 0.5) * scale
            if tolerance > 0 and len(xy) > 2:
                xy = measure.approximate_polygon(xy, tolerance)
            strokes[labels[rc[0, 0], rc[0, 1]] - 1].append(xy)
    return strokes


def to_svg(
    skeleton: np.ndarray, size: tuple[int, int] | None = None, stroke_width: float = 1.0, tolerance: float = 1.0
) -> str:
    """The bool skeleton (h, w) as an SVG document of `size` (W, H; default the skeleton's): one `<path>` per
    connected stroke, `stroke_width` output pixels wide, simplified to `tolerance` output pixels."""
    if not (isinstance(stroke_width, (int, float)) and np.isfinite(stroke_width) and stroke_width > 0):
        raise UsageError(f"stroke_width must be a positive number of pixels, got {stroke_width!r}")
    skeleton = _check_skeleton(skeleton)
    out_w, out_h = _check_size(size, (skeleton.shape[1], skeleton.shape[0]))
    strokes = trace(skeleton, (out_w, out_h), tolerance)
    svg = ET.Element("svg", {"xmlns": SVG_NAMESPACE, "version": "1.1", "width": str(out_w), "height": str(out_h),
                             "viewBox": f"0 0 {out_w} {out_h}"})
    style = {"fill": "none", "stroke": "black", "stroke-width": _number(round(float(stroke_width) * 10**DECIMALS)),
             "stroke-linecap": "round", "stroke-linejoin": "round"}
    # The pen is set once on a group that the paths inherit it from (plain SVG 1.1 presentation attributes,
    # which editors and plotter tools read), rather than repeated on every path, the bulk of a file of short
    # strokes otherwise.
    group = ET.SubElement(svg, "g", style)
    for polylines in strokes:
        ET.SubElement(group, "path", {"d": path_data(polylines)})
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(svg, encoding="unicode") + "\n"


def path_data(polylines: list[np.ndarray]) -> str:
    """SVG path data for polylines of (x, y) points: an absolute move to each start, then relative line-tos
    (rounded to `DECIMALS`, computed from the rounded points so errors do not add up); a single point is a
    zero-length line, which round caps draw as a dot."""
    parts = []
    for xy in polylines:
        q = np.rint(np.asarray(xy, np.float64) * 10**DECIMALS).astype(np.int64)
        steps = np.diff(q, axis=0) if len(q) > 1 else np.zeros((1, 2), np.int64)
        moves = " ".join(f"{_number(dx)} {_number(dy)}" for dx, dy in steps)
        parts.append(f"M{_number(q[0, 0])} {_number(q[0, 1])}l{moves}")
    return "".join(parts)


def _number(tenths: int) -> str:
    """An integer count of 10**-DECIMALS pixels as the shortest decimal text ("12.5", "3", "-0.4")."""
    value = int(tenths)
    sign, value = ("-" if value < 0 else ""), abs(value)
    whole, frac = divmod(value, 10**DECIMALS)
    text = str(whole) if not frac else f"{whole}.{frac:0{DECIMALS}d}".rstrip("0")
    return sign + text


def _check_skeleton(skeleton: np.ndarray) -> np.ndarray:
    skeleton = np.asarray(skeleton)
    if skeleton.ndim != 2:
        raise UsageError(f"skeleton must be a 2-D array, got shape {skeleton.shape}")
    return skeleton.astype(bool, copy=False)


def _check_size(size: tuple[int, int] | None, default: tuple[int, int]) -> tuple[int, int]:
    from linedraw.lineart import check_size as check

    return check(size, default, "size")


def _libs():
    """skan and scikit-image's measure, or a MissingDependencyError saying what to install."""
    try:
        import skan
        from skimage import measure
    except ImportError as exc:
        raise MissingDependencyError(
            f"SVG output needs skan and scikit-image ({exc.name} is missing): pip install 'linedraw[svg]'"
        ) from None
    return skan, measure
