"""`linedraw export --onnx -o FILE`: the generator as an ONNX graph (dynamic H/W), checked against PyTorch."""
from __future__ import annotations

import argparse
import importlib.util
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw export`."""
    parser = subparsers.add_parser("export", help="export a checkpoint's generator (ONNX)")
    parser.add_argument("--onnx", action="store_true", required=True, help="write an ONNX graph")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="where the .onnx file goes")
    parser.add_argument("--checkpoint", default="contour", metavar="NAME|PATH",
                        help="shipped checkpoint name, .safetensors file or training output dir (default: contour)")
    parser.add_argument("--example-size", type=int, default=256, metavar="N",
                        help="side of the example input traced (any multiple of 4 works at run time)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version (default: 18)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="fail when onnxruntime and PyTorch differ by more than this (default: 1e-4)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, then compare with PyTorch on a non-square input of another size when onnxruntime is installed."""
    from linedraw.checkpoint import CheckpointError, load_generator
    from linedraw.export import check_onnx, export_onnx

    if importlib.util.find_spec("onnxscript") is None:
        print("error: ONNX export needs onnxscript and onnx: pip install 'linedraw[onnx]'", file=sys.stderr)
        return 2
    try:
        model, _ = load_generator(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = export_onnx(model, args.output, args.example_size, args.opset)
    print(f"wrote {path}")
    if importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime not installed: skipped the check against PyTorch")
        return 0
    shape = (2, 3, args.example_size // 2 + 4, args.example_size + 36)
    diff = check_onnx(model, path, shape)
    print(f"onnxruntime vs PyTorch on a {shape[2]}x{shape[3]} batch of {shape[0]}: max abs diff {diff:.2e}")
    if diff > args.tolerance:
        print(f"error: difference above tolerance {args.tolerance}", file=sys.stderr)
        return 1
    return 0
