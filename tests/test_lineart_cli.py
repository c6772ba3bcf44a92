"""Line-art output through the conversion pipeline: `linedraw convert --thin / --stroke-width / --format svg` and
videos, end to end with the shipped `contour` checkpoint (the drawings of a real model, not synthetic strokes)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from linedraw.cli import main

pytest.importorskip("skimage", reason="line-art output needs scikit-image (pip install 'linedraw[lineart]')")

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "photos"


def _stroke_width(path: Path) -> float:
    """Ink per centre-line pixel: the mean width of the drawing's strokes, in pixels."""
    from skimage.morphology import skeletonize

    ink = 1.0 - np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0
    length = skeletonize(ink > 0.5).sum()
    return float(ink.sum() / max(length, 1))


def test_stroke_width_is_the_same_at_any_processing_size(tmp_path, capsys):
    photo = SAMPLES / "coffee.jpg"
    widths = {}
    for size in (256, 1024):
        out = tmp_path / str(size)
        assert main(["convert", str(photo), "-o", str(out), "--size", str(size), "--stroke-width", "3", "-q"]) == 0
        drawing = out / "coffee.png"
        assert Image.open(drawing).size == Image.open(photo).size
        widths[size] = _stroke_width(drawing)
    assert abs(widths[256] - widths[1024]) <= 1.0, widths
    assert abs(widths[256] - 3.0) <= 1.0, widths


def test_thin_gives_one_pixel_lines(tmp_path):
    out = tmp_path / "thin"
    assert main(["convert", str(SAMPLES / "coffee.jpg"), "-o", str(out), "--thin", "--min-stroke", "4"]) == 0
    ink = np.asarray(Image.open(out / "coffee.png")) < 128
    assert ink.any()
    # A 1-px line never fills a 2x2 block except where strokes cross.
    blocks = ink[:-1, :-1] & ink[1:, :-1] & ink[:-1, 1:] & ink[1:, 1:]
    assert blocks.sum() < 0.01 * ink.sum()


def test_svg_output_parses_and_is_sized_to_the_photo(tmp_path, capsys):
    out = tmp_path / "svg"
    assert main(["convert", str(SAMPLES / "coffee.jpg"), "-o", str(out), "--format", "svg", "--stroke-width", "2"]) == 0
    root = ET.parse(out / "coffee.svg").getroot()
    width, height = Image.open(SAMPLES / "coffee.jpg").size
    assert (root.get("width"), root.get("height")) == (str(width), str(height))
    paths = root.findall(".//{http://www.w3.org/2000/svg}path")
    assert len(paths) > 5
    assert root.find("{http://www.w3.org/2000/svg}g").get("stroke-width") == "2"
    assert root.find(".//{http://www.w3.org/2000/svg}filter") is None
    capsys.readouterr()
    assert main(["convert", str(SAMPLES / "coffee.jpg"), "-o", str(out), "--format", "svg", "--invert"]) == 2
    assert "--invert" in capsys.readouterr().err


def test_a_video_converts_beside_photos_and_a_corrupt_one_is_one_line(tmp_path, capsys):
    av = pytest.importorskip("av", reason="video conversion needs PyAV (pip install 'linedraw[video]')")
    from tests.test_video import _clip, _probe

    inputs = tmp_path / "in"
    inputs.mkdir()
    _clip(inputs / "clip.mp4", frames=6, size=(64, 48), fps=Fraction(12))
    (inputs / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    Image.open(SAMPLES / "coffee.jpg").resize((60, 40)).save(inputs / "photo.jpg")
    out = tmp_path / "out"
    rc = main(["convert", str(inputs), "-o", str(out), "--size", "64", "--temporal", "0.5", "-q"])
    err = capsys.readouterr().err
    assert rc == 1, "the corrupt video failed, so the exit code says so"
    assert [line for line in err.splitlines() if "broken.mp4" in line][0].startswith("failed:")
    assert "Traceback" not in err
    assert (out / "photo.png").is_file()
    frames, fps, width, height = _probe(out / "clip.mp4")
    assert (frames, fps, width, height) == (6, Fraction(12), 64, 48)
    assert not (out / "broken.mp4").exists()
    del av


def test_video_failures_of_any_kind_are_one_line_and_the_batch_goes_on(tmp_path, capsys):
    """A video the settings refuse (a strip) fails alone; a video at native size (size 0, the network's output
    returned as is) converts; the counts and exit code tell the truth."""
    pytest.importorskip("av", reason="video conversion needs PyAV (pip install 'linedraw[video]')")
    from tests.test_video import _clip, _probe

    inputs = tmp_path / "in"
    inputs.mkdir()
    _clip(inputs / "a_strip.mp4", frames=2, size=(1040, 16))
    _clip(inputs / "b_clip.mp4", frames=3, size=(32, 32))
    out = tmp_path / "out"
    rc = main(["convert", str(inputs), "-o", str(out), "--size", "16", "-q"])
    captured = capsys.readouterr()
    assert rc == 1 and "Traceback" not in captured.err
    assert [line for line in captured.err.splitlines() if "a_strip.mp4" in line][0].startswith("failed:")
    assert "converted 1, skipped 0, failed 1" in captured.out
    assert _probe(out / "b_clip.mp4")[0] == 3
    assert main(["convert", str(inputs / "b_clip.mp4"), "-o", str(tmp_path / "native"), "--size", "0", "-q"]) == 0
    assert _probe(tmp_path / "native" / "b_clip.mp4")[0] == 3


@pytest.mark.parametrize("extra", [["--thin"], ["--stroke-width", "2"], ["--format", "svg"]])
def test_centre_lines_take_any_threshold_between_0_and_1(tmp_path, capsys, extra):
    photo = tmp_path / "p.jpg"
    Image.open(SAMPLES / "coffee.jpg").resize((64, 48)).save(photo)
    assert main(["convert", str(photo), "-o", str(tmp_path / "hi"), "--size", "64", "--threshold", "0.9", "-q",
                 *extra]) == 0
    assert main(["convert", str(photo), "-o", str(tmp_path / "one"), "--size", "64", "--threshold", "1", "-q",
                 *extra]) == 2
    err = capsys.readouterr().err
    assert "strictly between 0 and 1" in err and "Traceback" not in err


def test_thin_with_line_weight_is_refused_not_ignored(tmp_path, capsys):
    photo = tmp_path / "p.jpg"
    Image.open(SAMPLES / "coffee.jpg").resize((64, 48)).save(photo)
    assert main(["convert", str(photo), "-o", str(tmp_path / "o"), "--thin", "--line-weight", "3"]) == 2
    assert "stroke_width" in capsys.readouterr().err
