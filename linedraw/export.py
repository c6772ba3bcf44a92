"""ONNX export of a generator (G_A) with dynamic batch, height and width, checked against PyTorch.

The graph takes (B, 3, H, W) photos in [0, 1] with H and W multiples of 4 and returns (B, 1, H, W)
drawings in [0, 1]; resizing, padding and post-processing stay with the caller (see `linedraw.convert`).
Uses the torch.export-based exporter (needs `onnxscript`; `pip install linedraw[onnx]`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

#: H and W of the exported graph must be multiples of this (the generator downsamples twice by 2).
SIZE_MULTIPLE = 4


def export_onnx(model: nn.Module, path: str | os.PathLike, example_size: int = 256, opset: int = 18) -> Path:
    """Write `model` as an ONNX graph with dynamic batch/height/width; returns the path."""
    from torch.export import Dim

    if example_size % SIZE_MULTIPLE:
        raise ValueError(f"example size must be a multiple of {SIZE_MULTIPLE}, got {example_size}")
    model = model.eval().float().to("cpu")
    example = torch.rand(1, 3, example_size, example_size)
    # Height and width are declared as 4 * k, which is what the generator accepts.
    height, width = Dim("height_div4", min=2, max=8192), Dim("width_div4", min=2, max=8192)
    dynamic = {"x": {0: Dim("batch", min=1, max=4096), 2: SIZE_MULTIPLE * height, 3: SIZE_MULTIPLE * width}}
    program = torch.onnx.export(
        model, (example,), dynamo=True, dynamic_shapes=dynamic, input_names=["photo"],
        output_names=["drawing"], opset_version=opset, verbose=False,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, shape: tuple[int, int, int, int] = (2, 3, 96, 160)) -> float:
    """Max absolute difference between onnxruntime and PyTorch on a random input of `shape` (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    photo = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model.eval().float().to("cpu")(photo).numpy()
    (actual,) = session.run(["drawing"], {"photo": photo.numpy()})
    return float(np.abs(actual - expected).max())
