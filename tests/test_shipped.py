"""The shipped checkpoints: each loads by name, has a model card, draws lines; the student follows its teacher."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import linedraw
from linedraw.checkpoint import list_checkpoints
from linedraw.eval.agreement import drawing_agreement

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "samples" / "photos").glob("*.jpg"))


def _drawings(name: str, **options) -> list[np.ndarray]:
    converter = linedraw.load(name, device="cpu", **options)
    return [np.asarray(converter(Image.open(path)), np.float32) / 255.0 for path in SAMPLES]


def test_shipped_checkpoints_have_cards_and_an_inference_size():
    shipped = {c.name: c for c in list_checkpoints()}
    assert {"contour", "contour-fast"} <= set(shipped)
    for name in ("contour", "contour-fast"):
        assert shipped[name].card is not None and shipped[name].card.read_text().startswith(f"# {name}")


@pytest.mark.slow
def test_student_follows_its_teacher_on_the_sample_photos():
    teacher, student = _drawings("contour"), _drawings("contour-fast", backend="torch")
    for drawing in teacher + student:
        assert (drawing < 0.5).mean() > 0.001  # real dark lines, not blank paper
    scores = [drawing_agreement(t, s) for t, s in zip(teacher, student)]
    assert np.mean([s["mae"] for s in scores]) < 0.08  # 0.046 measured when shipped
    assert np.mean([s["line_iou"] for s in scores]) > 0.1  # 0.211 measured when shipped


@pytest.mark.slow
def test_student_through_onnxruntime_matches_pytorch(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install 'linedraw[onnx]')")
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("LINEDRAW_CACHE", str(tmp_path))
    converter = linedraw.load("contour-fast", device="cpu")
    assert converter._onnx is not None  # the checkpoint recommends ONNX Runtime on CPU
    photo = Image.open(SAMPLES[0])
    reference = np.asarray(linedraw.load("contour-fast", device="cpu", backend="torch")(photo), np.float32)
    assert np.abs(np.asarray(converter(photo), np.float32) - reference).max() <= 1.0
