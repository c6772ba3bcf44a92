"""Line-art finishing: 1-px centre lines that keep ends and junctions, speck removal, a pen width in output
pixels that does not change with the processing resolution, and the `finish` call a converter makes."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage", reason="line-art finishing needs scikit-image (pip install 'linedraw[lineart]')")

from skimage import measure  # noqa: E402

from linedraw import lineart  # noqa: E402
from linedraw.errors import UsageError  # noqa: E402


def _strokes(shape: tuple[int, int], segments, width: float) -> np.ndarray:
    """A drawing (dark on white) of round-capped strokes `width` px wide along segments ((r0, c0), (r1, c1)),
    with a one-pixel anti-aliased rim, as a network draws them."""
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    distance = np.full(shape, np.inf)
    for (r0, c0), (r1, c1) in segments:
        dr, dc = r1 - r0, c1 - c0
        t = np.clip(((rows - r0) * dr + (cols - c0) * dc) / max(dr * dr + dc * dc, 1e-9), 0, 1)
        distance = np.minimum(distance, np.hypot(rows - r0 - t * dr, cols - c0 - t * dc))
    return np.clip(distance - width / 2 + 0.5, 0, 1).astype(np.float32)


def _endpoints(skeleton: np.ndarray) -> np.ndarray:
    """(N, 2) row/col of skeleton pixels with exactly one 8-neighbour."""
    padded = np.pad(skeleton, 1).astype(np.int64)
    neighbours = sum(np.roll(np.roll(padded, dr, 0), dc, 1) for dr in (-1, 0, 1) for dc in (-1, 0, 1)) - padded
    return np.argwhere(skeleton & (neighbours[1:-1, 1:-1] == 1))


def _has_2x2_block(skeleton: np.ndarray) -> bool:
    s = skeleton
    return bool((s[:-1, :-1] & s[1:, :-1] & s[:-1, 1:] & s[1:, 1:]).any())


def test_five_px_horizontal_stroke_thins_to_one_px_line_of_its_length():
    drawing = _strokes((64, 96), [((32, 15), (32, 75))], width=5)  # centre line: 61 pixels
    skeleton = lineart.thin(drawing)
    rows, cols = np.nonzero(skeleton)
    assert abs(skeleton.sum() - 61) <= 2
    assert np.bincount(cols).max() == 1  # one pixel per column: 1 px wide
    assert set(rows) <= {31, 32, 33}
    assert abs(cols.min() - 15) <= 2 and abs(cols.max() - 75) <= 2  # the ends are kept


def test_five_px_diagonal_stroke_thins_to_one_px_line_of_its_length():
    drawing = _strokes((96, 96), [((15, 15), (75, 75))], width=5)
    skeleton = lineart.thin(drawing)
    assert not _has_2x2_block(skeleton)
    assert measure.label(skeleton, connectivity=2).max() == 1
    ends = _endpoints(skeleton)
    assert len(ends) == 2
    assert np.abs(np.sort(ends, 0) - [[15, 15], [75, 75]]).max() <= 2


@pytest.mark.parametrize("name, segments, tips, junction", [
    ("T", [((12, 10), (12, 70)), ((12, 40), (70, 40))], [(12, 10), (12, 70), (70, 40)], (12, 40)),
    ("X", [((10, 10), (70, 70)), ((10, 70), (70, 10))], [(10, 10), (70, 70), (10, 70), (70, 10)], (40, 40)),
])
def test_junctions_keep_their_arms(name, segments, tips, junction):
    skeleton = lineart.thin(_strokes((82, 82), segments, width=5))
    assert measure.label(skeleton, connectivity=2).max() == 1, name
    ends = _endpoints(skeleton)
    assert len(ends) == len(tips), name
    for tip in tips:  # every arm reaches (within 3 px) the end of its stroke
        assert np.abs(ends - tip).max(axis=1).min() <= 3, (name, tip)
    arms = skeleton.copy()
    arms[junction[0] - 3 : junction[0] + 4, junction[1] - 3 : junction[1] + 4] = False
    assert not _has_2x2_block(arms)  # 1 px wide away from the crossing (a junction may be a small cluster)
    assert skeleton[junction[0] - 2 : junction[0] + 3, junction[1] - 2 : junction[1] + 3].any()


def test_merged_parallel_strokes_get_two_centre_lines_not_one_between_them():
    rows = np.arange(64, dtype=np.float32)[:, None]
    darkness = np.maximum(np.exp(-((rows - 28) ** 2) / 8), np.exp(-((rows - 33) ** 2) / 8)) * np.ones((1, 96))
    drawing = (1 - darkness).astype(np.float32)
    drawing[:, :10] = drawing[:, 80:] = 1
    assert measure.label(drawing < 0.5, connectivity=2).max() == 1  # they touch at the threshold
    middle = lineart.thin(drawing)[:, 20:70]
    found = sorted(set(np.nonzero(middle)[0]))  # plain thinning of the mask gives one line, at row 30 or 31
    assert len(found) == 2 and abs(found[0] - 28) <= 1 and abs(found[1] - 33) <= 1, found


def test_a_stroke_fading_to_grey_stays_whole_but_a_lone_grey_smudge_is_not_a_line():
    drawing = _strokes((64, 96), [((32, 10), (32, 85))], width=4)
    fade = np.clip(np.linspace(-0.2, 1.2, 96), 0, 0.7)[None, :]  # 0 at the left, 0.7 grey from column ~55
    drawing = np.maximum(drawing, fade).astype(np.float32)
    drawing[8:12, 30:60] = 0.7  # grey, touching no dark stroke
    whole = lineart.thin(drawing)
    cut = lineart.thin(drawing, weak_threshold=None)
    assert np.nonzero(whole[25:40])[1].max() >= 83  # the stroke reaches its end
    assert np.nonzero(cut[25:40])[1].max() <= 50  # the threshold alone stops where the grey starts
    assert not whole[:20].any() and not cut[:20].any()


def test_specks_shorter_than_min_stroke_are_dropped():
    drawing = _strokes((64, 96), [((40, 10), (40, 80))], width=3)
    for r, c in ((10, 10), (10, 50), (20, 85)):
        drawing[r : r + 3, c : c + 3] = 0.0
    assert measure.label(lineart.thin(drawing), connectivity=2).max() == 4
    skeleton = lineart.thin(drawing, min_stroke=5)
    assert measure.label(skeleton, connectivity=2).max() == 1
    assert skeleton[:30].sum() == 0 and skeleton[38:43].sum() >= 65


def test_remove_specks_whitens_only_the_specks():
    drawing = _strokes((64, 96), [((40, 10), (40, 80))], width=3)
    drawing[10:13, 10:13] = 0.2
    cleaned = lineart.remove_specks(drawing, min_stroke=5)
    assert (cleaned[5:20, 5:20] == 1.0).all()
    np.testing.assert_array_equal(cleaned[30:], drawing[30:])


def _scene(n: int) -> np.ndarray:
    """The same synthetic scene drawn at n x n, strokes n/64 px wide (as a network's strokes scale with size)."""
    s = n / 256
    segments = [((60 * s, 20 * s), (60 * s, 236 * s)), ((100 * s, 160 * s), (236 * s, 160 * s)),
                ((120 * s, 20 * s), (236 * s, 120 * s))]
    return _strokes((n, n), segments, width=n / 64)


def _horizontal_width(drawing: np.ndarray, out: int) -> float:
    """Mean ink across the horizontal stroke (row 60/256 of the scene), away from other strokes."""
    band = 1.0 - drawing[int(out * 40 / 256) : int(out * 80 / 256), int(out * 40 / 256) : int(out * 140 / 256)]
    return float(band.sum(axis=0).mean())


@pytest.mark.parametrize("antialias", [True, False])
def test_stroke_width_is_the_same_from_a_256_and_a_1024_px_drawing(antialias):
    out, width = 800, 3.0
    widths = []
    for n in (256, 1024):
        rendered = lineart.render_strokes(lineart.thin(_scene(n)), (out, out), width, antialias=antialias)
        assert rendered.shape == (out, out) and rendered.dtype == np.float32
        widths.append(_horizontal_width(rendered, out))
    assert abs(widths[0] - widths[1]) <= 1.0, widths
    assert all(abs(w - width) <= 1.0 for w in widths), widths
    # what resizing the network's drawing gives instead: a pen 4x wider from the 1024-px drawing
    naive = [_horizontal_width(np.asarray(Image.fromarray((_scene(n) * 255).astype(np.uint8)).resize(
        (out, out), Image.Resampling.BILINEAR), np.float32) / 255, out) for n in (256, 1024)]
    assert naive[0] == pytest.approx(naive[1], rel=0.2)  # same output size: both ~12.5 px, neither 3 px
    assert min(naive) > 3 * width


def test_upscaled_strokes_stay_connected():
    skeleton = np.zeros((32, 32), bool)
    idx = np.arange(4, 28)
    skeleton[idx, idx] = True
    skeleton[idx, 31 - idx] = True
    rendered = lineart.render_strokes(skeleton, (256, 256), width_px=1.0, antialias=False)
    assert measure.label(rendered < 0.5, connectivity=2).max() == 1


def test_finish_thin_gives_one_px_lines_at_the_output_size():
    drawing = _strokes((64, 96), [((32, 15), (32, 75))], width=5)
    out = lineart.finish(drawing, thin=True, out_size=(192, 128))
    assert out.mode == "L" and out.size == (192, 128)
    ink = np.asarray(out) < 128
    assert np.bincount(np.nonzero(ink)[1]).max() == 1  # 1 px wide at the output size
    assert set(np.unique(np.asarray(out))) <= {0, 255}


def test_finish_stroke_width_accepts_pil_and_tensors():
    import torch

    drawing = _strokes((64, 96), [((32, 15), (32, 75))], width=5)
    pil = Image.fromarray((drawing * 255).astype(np.uint8), mode="L")
    a = np.asarray(lineart.finish(pil, stroke_width=4, out_size=(384, 256)), np.float32) / 255
    b = np.asarray(lineart.finish(torch.from_numpy(drawing)[None], stroke_width=4, out_size=(384, 256)),
                   np.float32) / 255
    assert np.abs(a - b).max() <= 1 / 255
    assert (1 - a)[:, 150:250].sum(axis=0).mean() == pytest.approx(4.0, abs=1.0)


def test_finish_without_options_only_resizes():
    drawing = _strokes((64, 96), [((32, 15), (32, 75))], width=5)
    same = lineart.finish(drawing)
    np.testing.assert_array_equal(np.asarray(same), np.rint(drawing * 255).astype(np.uint8))
    assert lineart.finish(drawing, out_size=(48, 32)).size == (48, 32)


def test_blank_drawing_gives_blank_output():
    blank = np.ones((40, 50), np.float32)
    assert not lineart.thin(blank).any()
    assert (np.asarray(lineart.finish(blank, stroke_width=2, out_size=(100, 80))) == 255).all()


@pytest.mark.parametrize("call, argument", [
    (lambda d: lineart.thin(d, threshold=1.5), "threshold"),
    (lambda d: lineart.thin(d, min_stroke=-1), "min_stroke"),
    (lambda d: lineart.thin(d, threshold=0.6, weak_threshold=0.5), "weak_threshold"),
    (lambda d: lineart.finish(d, stroke_width=0), "stroke_width"),
    (lambda d: lineart.finish(d, thin=True, out_size=(0, 10)), "out_size"),
    (lambda d: lineart.render_strokes(d < 0.5, (10, 10), width_px=float("nan")), "width_px"),
    (lambda d: lineart.thin(np.ones((4, 5, 3), np.float32)), "drawing"),
])
def test_bad_arguments_are_usage_errors_naming_the_argument(call, argument):
    with pytest.raises(UsageError, match=argument):
        call(np.ones((16, 16), np.float32))
