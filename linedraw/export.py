"""ONNX export of a generator (G_A) with dynamic batch, height and width, checked against PyTorch.

The graph takes (B, 3, H, W) photos in [0, 1] with H and W multiples of the model's `size_multiple` and returns
(B, 1, H, W) drawings in [0, 1]; resizing, padding and post-processing stay with the caller (see `linedraw.convert`).
Uses the torch.export-based exporter (needs `onnxscript`; `pip install linedraw[onnx]`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from linedraw.models import size_multiple


def export_onnx(model: nn.Module, path: str | os.PathLike, example_size: int = 256, opset: int = 18) -> Path:
    """Write `model` as an ONNX graph with dynamic batch/height/width; returns the path."""
    from torch.export import Dim

    from linedraw.errors import UsageError

    multiple = size_multiple(model)
    if example_size < 2 * multiple or example_size % multiple:
        raise UsageError(f"example_size must be a multiple of {multiple} (the model's size_multiple), at least "
                         f"{2 * multiple}, got {example_size}")
    model = model.eval().float().to("cpu")
    example = torch.rand(1, 3, example_size, example_size)
    # Height and width are declared as size_multiple * k, which is what the model accepts.
    height, width = Dim(f"height_div{multiple}", min=2, max=8192), Dim(f"width_div{multiple}", min=2, max=8192)
    if multiple > 1:
        height, width = multiple * height, multiple * width
    dynamic = {"x": {0: Dim("batch", min=1, max=4096), 2: height, 3: width}}
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


def onnx_cache_dir() -> Path:
    """Where `OnnxRunner` keeps exported graphs: `$LINEDRAW_CACHE/onnx`, else `~/.cache/linedraw/onnx`."""
    root = os.environ.get("LINEDRAW_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "linedraw")
    return Path(root) / "onnx"


class OnnxRunner:
    """Runs a generator through ONNX Runtime on the CPU (same inputs and outputs as the PyTorch module).

    The graph is exported once per distinct weights (keyed by a hash of the state dict and the torch version)
    into `onnx_cache_dir()`, written atomically, so later runs start at once.
    """

    def __init__(self, model: nn.Module, threads: int | None = None) -> None:
        import copy
        import hashlib
        import io
        from contextlib import redirect_stdout

        import onnxruntime

        from linedraw.images import write_atomic_path

        digest = hashlib.sha256(torch.__version__.encode())
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        self.path = onnx_cache_dir() / f"{type(model).__name__}-{digest.hexdigest()[:16]}.onnx"
        if not self.path.is_file():
            # torch.export rejects channels-last weights here ("Invalid ranges"): export a contiguous copy.
            plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
            with redirect_stdout(io.StringIO()):  # the exporter narrates its steps on stdout
                write_atomic_path(self.path, lambda tmp: export_onnx(plain, tmp))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # The memory pattern (pre-planned buffers per input shape) ran slower for these graphs and saved no memory;
        # the arena stays on (off, every run allocates afresh), so callers bound memory with the input size instead.
        options.enable_mem_pattern = False
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        (drawing,) = self.session.run(["drawing"], {"photo": batch.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(drawing)
