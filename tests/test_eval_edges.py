"""The BSDS500 edge benchmark: hand-computed aggregation, matching on synthetic lines, the CLI, real data."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pyEdgeEval", reason="pyEdgeEval not installed (pip install 'linedraw[eval]')")

from linedraw.cli import main  # noqa: E402
from linedraw.eval import edges  # noqa: E402


def test_thresholds_match_the_benchmark():
    assert np.allclose(edges.thresholds(99)[[0, -1]], [0.01, 0.99])
    assert np.allclose(edges.thresholds(3), [0.25, 0.5, 0.75])


def test_summarize_matches_hand_computed_ods_ois_ap():
    levels = np.array([0.25, 0.5, 0.75])
    # rows: matched GT, all GT, matched predictions, all predictions; columns: thresholds
    a = np.array([[8, 6, 2], [10, 10, 10], [4, 6, 2], [8, 6, 2]], dtype=float)  # R .8 .6 .2, P .5 1 1
    b = np.array([[5, 4, 1], [10, 10, 10], [5, 4, 1], [10, 5, 1]], dtype=float)  # R .5 .4 .1, P .5 .8 1
    s = edges.summarize({"a": a, "b": b}, levels)
    # dataset curve: R = 13/20, 10/20, 3/20; P = 9/18, 10/11, 3/3
    recall, precision = np.array([0.65, 0.5, 0.15]), np.array([0.5, 10 / 11, 1.0])
    # ODS interpolates 101 steps between neighbouring thresholds and keeps the best F
    best = 0.0
    for i in range(1, 3):
        for d in np.linspace(0, 1, 101):
            r = recall[i] * d + recall[i - 1] * (1 - d)
            p = precision[i] * d + precision[i - 1] * (1 - d)
            best = max(best, 2 * p * r / (p + r))
    assert s.ods == pytest.approx(best)
    assert s.ods > 2 * (10 / 11) * 0.5 / (10 / 11 + 0.5) - 1e-9  # at least the best sampled threshold
    # OIS: a is best at t=.5 (F .75), b at t=.5 (F 8/15): counts 6+4 / 20, 6+4 / 11
    r_ois, p_ois = 10 / 20, 10 / 11
    assert s.ois == pytest.approx(2 * p_ois * r_ois / (p_ois + r_ois))
    assert s.per_image["a"]["threshold"] == 0.5 and s.per_image["a"]["f"] == pytest.approx(0.75)
    # AP: precision interpolated over recall 0, .01, ..., 1 (0 outside the measured recall range) x 0.01
    grid = np.linspace(0, 1, 101)
    expected_ap = np.interp(grid, recall[::-1], precision[::-1], left=0, right=0).sum() * 0.01
    assert s.ap == pytest.approx(expected_ap)
    assert s.images == 2


def test_match_counts_on_synthetic_lines():
    # two annotators draw the same vertical line one pixel apart; tolerance 0.0075 * 141 px diagonal > 1 px
    truth = np.zeros((2, 100, 100), dtype=bool)
    truth[0, :, 50] = True
    truth[1, :, 51] = True
    edge_map = np.zeros((100, 100))
    edge_map[:, 50] = 0.8  # the true line
    edge_map[:, 10] = 0.3  # a faint false line
    counts = edges.match_counts(edge_map, truth, np.array([0.25, 0.5, 0.9]))
    matched_gt, all_gt, matched_pred, all_pred = counts
    assert list(all_gt) == [200, 200, 200]
    assert list(all_pred) == [200, 100, 0]
    assert matched_pred[0] == 100 and matched_pred[1] == 100  # only the true line matches
    # the matcher breaks ties at random: a pixel or two may go unmatched
    assert matched_gt[1] >= 196 and matched_gt[0] >= 196 and matched_gt[2] == 0


def test_drawing_to_edge_probability():
    assert np.allclose(edges.edge_probability(np.array([[0.0, 1.0, 0.25]])), [[1.0, 0.0, 0.75]])


def _write_case(tmp_path):
    gt_dir, drawing_dir = tmp_path / "gt", tmp_path / "drawings"
    gt_dir.mkdir()
    drawing_dir.mkdir()
    for name, column in (("img1", 30), ("img2", 60), ("img3", 40)):
        truth = np.zeros((1, 80, 100), dtype=bool)
        truth[0, :, column] = True
        np.savez(gt_dir / f"{name}.npz", boundaries=truth)
    for name, column in (("img1", 30), ("img2", 60), ("extra", 10)):
        drawing = np.full((80, 100), 255, dtype=np.uint8)
        drawing[:, column] = 0  # a black line on white, right on the annotation
        Image.fromarray(drawing).save(drawing_dir / f"{name}.png")
    return gt_dir, drawing_dir


def test_cli_scores_reports_missing_and_resumes(tmp_path, monkeypatch, capsys):
    gt_dir, drawing_dir = _write_case(tmp_path)
    out, counts = tmp_path / "edges.json", tmp_path / "counts.json"
    args = ["eval", "edges", "--drawings", str(drawing_dir), "--gt", str(gt_dir), "--thresholds", "3",
            "--json", str(out), "--counts", str(counts), "--quiet"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["scores"]["images"] == 2
    # BSDS pixel matching (pyEdgeEval's port of correspondPixels) is not fully deterministic: a perfect line
    # scores 0.994-1.0, so allow a pixel or two; a broken scorer lands far from 1.
    assert report["scores"]["ods"] == pytest.approx(1.0, abs=0.01)
    assert report["scores"]["ois"] == pytest.approx(1.0, abs=0.01)
    assert report["missing_drawings"] == ["img3"]
    assert report["missing_ground_truth"] == [str(drawing_dir / "extra.png")]
    text = capsys.readouterr().out
    assert "1 ground-truth image(s) without a drawing: img3" in text
    assert f"ODS F {report['scores']['ods']:.4f}" in text  # the printed report is the JSON's (near-1.0) score

    # a rerun takes the saved counts and matches nothing again
    def fail(task):
        raise AssertionError(f"recomputed {task[0]}")

    monkeypatch.setattr(edges, "_count_one", fail)
    assert main(args) == 0
    assert json.loads(out.read_text())["scores"]["ods"] == pytest.approx(1.0, abs=0.01)


def test_cli_names_a_corrupt_drawing_and_goes_on(tmp_path, capsys):
    gt_dir, drawing_dir = _write_case(tmp_path)
    (drawing_dir / "img3.png").write_bytes(b"not a png")
    code = main(["eval", "edges", "--drawings", str(drawing_dir), "--gt", str(gt_dir), "--thresholds", "1",
                 "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"error: {drawing_dir / 'img3.png'}:" in out
    assert "images evaluated: 2" in out


def test_one_bsds500_annotator_scores_perfect_precision(shared_data, tmp_path):
    gt_dir = shared_data / "bsds500" / "val" / "groundTruth"
    gt_path = sorted(gt_dir.glob("*.npz"))[0]
    truth = edges.load_boundaries(gt_path)
    assert truth.ndim == 3 and truth.shape[0] >= 3
    # the first annotator's map as a drawing: every drawn pixel is a boundary of that annotator
    counts = edges.match_counts(truth[0].astype(float), truth[:3], np.array([0.5]))
    assert counts[2, 0] == counts[3, 0] > 0  # precision 1
    assert counts[0, 0] < counts[1, 0]  # the other annotators disagree somewhere
