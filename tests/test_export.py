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
    assert main(["export", "-o", str(output), "--checkpoint", str(checkpoint), "--example-size", "64"]) == 0
    assert "max abs diff" in capsys.readouterr().out

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 48, 112), (3, 3, 100, 36)]:  # non-square, neither is the traced 64x64
        photo = torch.rand(*shape)
        (drawing,) = session.run(None, {"photo": photo.numpy()})
        with torch.inference_mode():
            expected = model(photo).numpy()
        assert drawing.shape == (shape[0], 1, *shape[2:])
        assert np.abs(drawing - expected).max() < 1e-4


STUDENT = {"model": "fast_generator", "kwargs": {"width": 8, "n_blocks": 1, "n_blocks_half": 1}}


@pytest.mark.slow
def test_onnxruntime_backend_matches_pytorch_and_caches_the_graph(tmp_path, monkeypatch):
    from PIL import Image

    from linedraw.convert import Converter

    monkeypatch.setenv("LINEDRAW_CACHE", str(tmp_path / "cache"))
    model = create_model(STUDENT["model"], **STUDENT["kwargs"]).eval()
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)).resize((90, 58), Image.BICUBIC)
    reference = np.asarray(Converter(model, size=0, device="cpu", backend="torch")(photo), np.float32)
    fast = Converter(model, size=0, device="cpu", backend="onnxruntime")
    assert fast._onnx is not None and len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    assert np.abs(np.asarray(fast(photo), np.float32) - reference).max() <= 1.0  # at most one grey level
    tiled = Converter(model, size=0, device="cpu", backend="onnxruntime", max_pixels=32 * 32, tile_overlap=16)
    assert np.abs(np.asarray(tiled(photo), np.float32) - reference).mean() < 0.02 * 255
    # "auto" follows the checkpoint's CPU recommendation and reuses the cached graph
    recommended = Converter(model, {"inference": {"cpu_backend": "onnxruntime"}}, size=0, device="cpu")
    assert recommended._onnx is not None and recommended._onnx.path == fast._onnx.path
    assert Converter(model, size=0, device="cpu")._onnx is None  # no recommendation: PyTorch
    from linedraw.convert import DEFAULT_MAX_PIXELS, ONNX_MAX_PIXELS  # smaller tiles bound ONNX Runtime's arena

    assert fast.max_pixels == ONNX_MAX_PIXELS and Converter(model, device="cpu").max_pixels == DEFAULT_MAX_PIXELS
    assert Converter(model, device="cpu", backend="onnxruntime", max_pixels=5000).max_pixels == 5000
    with pytest.raises(ValueError, match="backend"):
        Converter(model, device="cpu", backend="tensorrt")


def test_export_checks_the_example_against_the_model_s_own_size_multiple(tmp_path):
    from linedraw.errors import UsageError
    from linedraw.export import export_onnx
    from tests.synthetic import Needs8

    with pytest.raises(UsageError, match="example_size must be a multiple of 8"):
        export_onnx(Needs8(), tmp_path / "g.onnx", example_size=20)
    assert not (tmp_path / "g.onnx").exists()


@pytest.mark.slow
def test_export_cli_checks_at_a_size_on_the_model_s_grid(tmp_path, capsys):
    """--example-size 68: the check's other size (half the side, plus a step) stays a multiple of 4."""
    model = create_model(TINY["model"], **TINY["kwargs"]).eval()
    checkpoint = save_generator(model, tmp_path / "tiny", TINY)
    assert main(["export", "-o", str(tmp_path / "g.onnx"), "--checkpoint", str(checkpoint),
                 "--example-size", "68"]) == 0
    assert "on a 36x104 batch of 2" in capsys.readouterr().out
