"""SVG output: valid, one path per stroke, scaled to the photo, simplified, and it rasterises back to the strokes
`render_strokes` draws."""
from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skan", reason="SVG output needs skan (pip install 'linedraw[svg]')")

from linedraw import lineart, vector  # noqa: E402
from linedraw.errors import UsageError  # noqa: E402

NS = {"svg": "http://www.w3.org/2000/svg"}


def _parse(svg: str) -> tuple[ET.Element, list[ET.Element]]:
    root = ET.fromstring(svg.encode("utf-8"))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root, root.findall(".//svg:path", NS)


def _points(d: str) -> list[list[tuple[float, float]]]:
    """The absolute points of each subpath of path data written by `vector.path_data` (M x y l dx dy ...)."""
    subpaths = []
    for part in re.findall(r"M[^M]*", d):
        start, _, moves = part[1:].partition("l")
        x, y = map(float, start.split())
        points = [(x, y)]
        numbers = list(map(float, moves.replace("-", " -").split()))
        for dx, dy in zip(numbers[::2], numbers[1::2]):
            x, y = x + dx, y + dy
            points.append((round(x, 1), round(y, 1)))
        subpaths.append(points)
    return subpaths


def _two_strokes() -> np.ndarray:
    drawing = np.ones((64, 96), np.float32)
    drawing[10:15, 10:80] = 0.0
    drawing[40:45, 10:80] = 0.0
    return drawing


def test_two_separate_strokes_give_two_paths_in_a_valid_svg_sized_to_the_photo():
    svg = vector.to_svg(lineart.thin(_two_strokes()), size=(192, 128), stroke_width=2.5)
    root, paths = _parse(svg)
    assert (root.get("width"), root.get("height"), root.get("viewBox")) == ("192", "128", "0 0 192 128")
    assert len(paths) == 2
    group = root.find("svg:g", NS)
    assert group.get("fill") == "none" and group.get("stroke") == "black" and group.get("stroke-width") == "2.5"
    assert group.get("stroke-linecap") == "round" and group.get("stroke-linejoin") == "round"
    assert "filter" not in svg
    ys = sorted(np.mean([p[1] for p in _points(path.get("d"))[0]]) for path in paths)
    assert ys == pytest.approx([2 * 12.5, 2 * 42.5], abs=2.5)  # scaled 2x from the 64x96 skeleton


def test_a_junction_is_one_path_with_a_subpath_per_branch():
    skeleton = np.zeros((40, 60), bool)
    skeleton[10, 5:55] = True
    skeleton[10:35, 30] = True
    _, paths = _parse(vector.to_svg(skeleton))
    assert len(paths) == 1
    assert len(_points(paths[0].get("d"))) == 3


def test_tolerance_simplifies_a_straight_stroke_to_its_two_ends():
    skeleton = np.zeros((20, 80), bool)
    skeleton[10, 5:75] = True
    (coarse,), (fine,) = vector.trace(skeleton, tolerance=1.0), vector.trace(skeleton, tolerance=0)
    assert len(coarse[0]) == 2 and len(fine[0]) == 70
    np.testing.assert_allclose(coarse[0], [[5.5, 10.5], [74.5, 10.5]])


def test_a_loop_closes_and_a_lone_pixel_is_a_dot():
    from skimage.draw import circle_perimeter

    skeleton = np.zeros((50, 50), bool)
    rr, cc = circle_perimeter(25, 25, 15)
    skeleton[rr, cc] = True
    skeleton[3, 3] = True
    strokes = vector.trace(skeleton, tolerance=0.5)
    assert sorted(len(s) for s in strokes) == [1, 1]
    loop = max((s[0] for s in strokes), key=len)
    np.testing.assert_allclose(loop[0], loop[-1])
    dot = min((s[0] for s in strokes), key=len)
    np.testing.assert_allclose(dot, [[3.5, 3.5]])
    assert "M3.5 3.5l0 0" in vector.to_svg(skeleton)


def test_blank_skeleton_gives_an_empty_valid_svg():
    _, paths = _parse(vector.to_svg(np.zeros((10, 20), bool), size=(40, 20)))
    assert paths == []


def test_svg_rasterises_back_to_the_rendered_strokes():
    resvg = pytest.importorskip("resvg_py", reason="rasterising SVG in this test needs resvg-py")
    drawing = np.ones((96, 128), np.float32)
    rows, cols = np.mgrid[:96, :128]
    drawing[np.abs(np.hypot(rows - 48, cols - 64) - 30) < 2.5] = 0.0  # a ring
    drawing[10:14, 5:120] = 0.0
    drawing[20:90, 8:12] = 0.0
    drawing[np.abs(rows - cols * 0.5 - 20) < 2] = 0.0  # a diagonal crossing the ring
    skeleton = lineart.thin(drawing)
    size = (256, 192)  # 2x the skeleton
    for width, min_iou in ((6.0, 0.8), (3.0, 0.6)):  # a thin pen's 1-px rims weigh more in the IoU
        svg = vector.to_svg(skeleton, size, stroke_width=width, tolerance=1.0)
        png = resvg.svg_to_bytes(svg_string=svg, background="white")
        svg_grey = np.asarray(Image.open(io.BytesIO(bytes(png))).convert("L"), np.float32) / 255
        raster_grey = lineart.render_strokes(skeleton, size, width)
        assert svg_grey.shape == raster_grey.shape
        svg_ink, raster_ink = svg_grey < 0.5, raster_grey < 0.5
        iou = (svg_ink & raster_ink).sum() / (svg_ink | raster_ink).sum()
        assert iou >= min_iou, (width, iou)
        assert (1 - svg_grey).sum() == pytest.approx((1 - raster_grey).sum(), rel=0.1)  # the same amount of ink


@pytest.mark.parametrize("options, argument", [({"invert": True}, "invert"), ({"line_weight": 2}, "line_weight")])
def test_raster_only_options_are_usage_errors_for_svg(options, argument):
    with pytest.raises(UsageError, match=argument):
        vector.check_svg_options(**options)
    vector.check_svg_options(invert=False, line_weight=0)


@pytest.mark.parametrize("kwargs, argument", [
    ({"stroke_width": 0}, "stroke_width"), ({"tolerance": -1}, "tolerance"), ({"size": (10,)}, "size"),
])
def test_bad_arguments_are_usage_errors_naming_the_argument(kwargs, argument):
    with pytest.raises(UsageError, match=argument):
        vector.to_svg(np.zeros((8, 8), bool), **kwargs)
