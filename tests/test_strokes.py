"""Stroke quality scores: specks, stroke length and checkerboard energy on drawings with known answers; the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage", reason="stroke scores need scikit-image (pip install 'linedraw[eval]')")

from linedraw.cli import main  # noqa: E402
from linedraw.errors import MissingFileError, UsageError  # noqa: E402
from linedraw.eval.strokes import checkerboard_energy, evaluate_strokes, stroke_scores  # noqa: E402

SAMPLE_DRAWINGS = Path(__file__).resolve().parents[1] / "samples" / "drawings"


def _paper(h: int = 64, w: int = 96) -> np.ndarray:
    return np.ones((h, w), np.float32)


def test_long_solid_line_has_no_specks_and_one_long_stroke():
    drawing = _paper()
    drawing[30, 8:88] = 0.0
    scores = stroke_scores(drawing)
    assert scores["speck_fraction"] == 0.0
    assert scores["strokes"] == 1
    assert scores["mean_stroke_length"] >= 75


def test_thick_line_counts_its_length_not_its_area():
    drawing = _paper()
    drawing[29:32, 8:88] = 0.0  # 3 px wide, 80 long: 240 pixels
    assert 70 <= stroke_scores(drawing)["mean_stroke_length"] <= 82


def test_dotted_line_is_all_specks_and_short_strokes():
    drawing = _paper()
    drawing[30, 8:88:4] = 0.0
    drawing[31, 8:88:4] = 0.0  # 2-pixel dots, 2 px apart
    scores = stroke_scores(drawing)
    assert scores["speck_fraction"] == 1.0
    assert scores["strokes"] == 20
    assert scores["mean_stroke_length"] <= 2


def test_broken_line_sits_between_solid_and_dotted():
    drawing = _paper()
    for start in range(8, 88, 10):  # dashes of 7 px
        drawing[30, start : start + 7] = 0.0
    scores = stroke_scores(drawing)
    assert scores["speck_fraction"] == 0.0
    assert scores["strokes"] == 8
    assert 6 <= scores["mean_stroke_length"] <= 7


def test_blank_paper_scores_zero():
    assert stroke_scores(_paper()) == {"speck_fraction": 0.0, "mean_stroke_length": 0.0, "strokes": 0.0,
                                       "checkerboard_energy": 0.0}


def test_one_pixel_checkerboard_is_all_nyquist_energy_and_smooth_images_none():
    i, j = np.indices((64, 96))
    assert checkerboard_energy(((i + j) % 2).astype(np.float32)) == pytest.approx(1.0)
    assert checkerboard_energy((i % 2).astype(np.float32)) == pytest.approx(1.0)  # (pi, 0) stripes
    blob = np.exp(-((i - 32.0) ** 2 + (j - 48.0) ** 2) / 300.0)
    assert checkerboard_energy(blob) < 1e-4
    ramp = j / 95.0
    assert checkerboard_energy(ramp) < 1e-2


def test_faint_checkerboard_on_a_drawing_stands_out():
    i, j = np.indices((64, 96))
    drawing = _paper()
    drawing[30, 8:88] = 0.0
    clean = checkerboard_energy(drawing)
    dirty = checkerboard_energy(drawing - 0.1 * ((i + j) % 2))
    assert dirty > 10 * clean and dirty > 0.05


def test_odd_sizes_drop_the_last_row_and_column():
    i, j = np.indices((65, 97))
    assert checkerboard_energy(((i + j) % 2).astype(np.float32)) == pytest.approx(1.0)


def test_bad_arguments_name_the_argument():
    with pytest.raises(UsageError, match="threshold"):
        stroke_scores(_paper(), threshold=1.5)
    with pytest.raises(UsageError, match="2-D"):
        stroke_scores(np.ones((2, 8, 8)))
    with pytest.raises(UsageError, match="2x2"):
        checkerboard_energy(np.ones((1, 8)))


def _write(path: Path, drawing: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((drawing * 255).astype(np.uint8), "L").save(path)


def test_folder_report_rows_means_and_unreadable_files(tmp_path):
    solid, dotted = _paper(), _paper()
    solid[30, 8:88] = 0.0
    dotted[30, 8:88:4] = 0.0
    _write(tmp_path / "solid.png", solid)
    _write(tmp_path / "sub" / "dotted.png", dotted)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    report = evaluate_strokes(tmp_path)
    assert sorted(report.rows) == ["solid.png", "sub/dotted.png"]
    assert report.rows["solid.png"]["speck_fraction"] == 0.0
    assert report.rows["sub/dotted.png"]["speck_fraction"] == 1.0
    assert report.means["speck_fraction"] == pytest.approx(0.5)
    assert len(report.errors) == 1 and "broken.png" in report.errors[0]
    with pytest.raises(MissingFileError, match="nowhere"):
        evaluate_strokes(tmp_path / "nowhere")


def test_cli_prints_json_and_reports_bad_input(tmp_path, capsys):
    drawing = _paper()
    drawing[30, 8:88] = 0.0
    _write(tmp_path / "d" / "a.png", drawing)
    for json_flag in (["--json", "-"], ["--json"]):
        assert main(["eval", "strokes", "--drawings", str(tmp_path / "d"), *json_flag]) == 0
        payload = json.loads(capsys.readouterr().out)
        assert payload["count"] == 1 and payload["drawings"]["a.png"]["strokes"] == 1
    assert main(["eval", "strokes", "--drawings", str(tmp_path / "d"), "--json", str(tmp_path / "s.json")]) == 0
    assert "mean" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["means"]["speck_fraction"] == 0.0
    assert main(["eval", "strokes", "--drawings", str(tmp_path / "d"), "--threshold", "0"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert main(["eval", "strokes", "--drawings", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["eval", "strokes", "--drawings", str(tmp_path / "empty")]) == 1


@pytest.mark.skipif(not SAMPLE_DRAWINGS.is_dir(), reason="samples/drawings not in this checkout")
def test_shipped_sample_drawings_are_measured():
    report = evaluate_strokes(SAMPLE_DRAWINGS)
    assert len(report.rows) >= 6 and not report.errors
    assert 0 <= report.means["speck_fraction"] < 1 and report.means["mean_stroke_length"] > 1
