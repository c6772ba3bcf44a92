"""ONNX export: the graph has dynamic size and matches PyTorch on a non-square size it was not traced at."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from linedraw.checkpoint import save_generator
from linedraw.cli import main
from linedraw.models import create_model

pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install 'linedraw[onnx]')")
onnxruntime = pytest.importorskip("onnxruntime")

TINY = {"model": "resnet_generator", "kwargs": {"in_channels": 3, "out_channels": 1, "ngf": 8, "n_blocks": 1}}


@pytest.mark.slow
def test_export_cli_matches_pytorch_at_other_sizes(tmp_path, capsys):
    model = create_model(TINY["model"], **TINY["kwargs"]).eval()
    checkpoint = save_generator(model, tmp_path / "tiny", TINY)
    output = tmp_path / "g.onnx"
    assert main(["export", "--onnx", "-o", str(output), "--checkpoint", str(checkpoint), "--example-size", "64"]) == 0
    assert "max abs diff" in capsys.readouterr().out

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 48, 112), (3, 3, 100, 36)]:  # non-square, neither is the traced 64x64
        photo = torch.rand(*shape)
        (drawing,) = session.run(None, {"photo": photo.numpy()})
        with torch.inference_mode():
            expected = model(photo).numpy()
        assert drawing.shape == (shape[0], 1, *shape[2:])
        assert np.abs(drawing - expected).max() < 1e-4
