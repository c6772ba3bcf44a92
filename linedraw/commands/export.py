"""`linedraw export -o FILE`: the generator as an ONNX graph (dynamic H/W), checked against PyTorch."""
from __future__ import annotations

import argparse
import importlib.util
import sys


class _Deprecated(argparse.Action):
    """`--onnx`: once required to pick the (only) format, now the default; accepted with a one-line note."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {option_string} is deprecated and will be removed: ONNX is the default (and only) "
              "export format", file=sys.stderr)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw export`."""
    from linedraw.commands.options import add_output

    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint's generator (ONNX)",
        description="Write a checkpoint's generator as an ONNX graph with dynamic batch, height and width "
        "(multiples of the generator's size multiple), for ONNX Runtime or other engines; when onnxruntime is installed, the graph is "
        "checked against PyTorch on an input of another size than the one traced.",
    )
    add_output(parser, "where the .onnx file goes", metavar="FILE")
    parser.add_argument("--onnx", action=_Deprecated, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default="contour", metavar="NAME|PATH",
                        help="shipped checkpoint name, .safetensors file or training output dir (default: contour)")
    parser.add_argument("--example-size", type=int, default=256, metavar="N",
                        help="side of the example input traced, a multiple of the generator's size multiple (any "
                             "such multiple works at run time; default: %(default)s)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version (default: 18)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="fail when onnxruntime and PyTorch differ by more than this (default: 1e-4)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, then compare with PyTorch on a non-square input of another size when onnxruntime is installed."""
    from linedraw.checkpoint import load_generator
    from linedraw.errors import LinedrawError
    from linedraw.export import check_onnx, export_onnx
    from linedraw.models import size_multiple
    from linedraw.images import check_writable

    check_writable(args.output)  # before loading and tracing, which take a while
    if importlib.util.find_spec("onnxscript") is None:
        raise LinedrawError("ONNX export needs onnxscript and onnx: pip install 'linedraw[onnx]'")
    model, _ = load_generator(args.checkpoint)
    path = export_onnx(model, args.output, args.example_size, args.opset)
    print(f"wrote {path}")
    if importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime not installed: skipped the check against PyTorch")
        return 0
    multiple = size_multiple(model)  # another size than the traced one, non-square, on the model's grid
    shape = (2, 3, (args.example_size // 2 // multiple + 1) * multiple, args.example_size + 9 * multiple)
    diff = check_onnx(model, path, shape)
    print(f"onnxruntime vs PyTorch on a {shape[2]}x{shape[3]} batch of {shape[0]}: max abs diff {diff:.2e}")
    if diff > args.tolerance:
        print(f"error: difference above tolerance {args.tolerance}", file=sys.stderr)
        return 1
    return 0
