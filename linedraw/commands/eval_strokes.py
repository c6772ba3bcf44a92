"""`linedraw eval strokes --drawings DIR`: how dotted, broken and checkerboarded a folder of drawings is."""
from __future__ import annotations

import argparse
import sys

from linedraw.commands.options import add_json, emit
from linedraw.errors import UsageError


def register(eval_subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw eval strokes`."""
    parser = eval_subparsers.add_parser(
        "strokes", help="stroke quality of drawings: isolated specks, stroke length, checkerboard energy",
        description="Binarise each drawing (dark lines on white) at --threshold and report, per drawing and "
                    "averaged: the fraction of line pixels in isolated specks (8-connected components of at most "
                    "4 pixels), the mean skeleton length of the connected strokes in pixels, the number of "
                    "strokes, and the share of the grey drawing's non-DC spectral energy at the stride-2 "
                    "(Nyquist) frequencies. Compare drawings of the same size: lengths are in pixels, and "
                    "resizing a drawing smooths a checkerboard away.")
    parser.add_argument("--drawings", required=True, help="folder of drawings (searched recursively)")
    parser.add_argument("--threshold", type=float, default=0.5, help="line / paper threshold in (0, 1) (default: 0.5)")
    add_json(parser, "the scores")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every drawing was measured, 1 when some could not be read or the folder holds none."""
    from linedraw.eval.strokes import SCORE_NAMES, evaluate_strokes

    if not 0.0 < args.threshold < 1.0:
        raise UsageError(f"--threshold must be between 0 and 1, got {args.threshold}")
    report = evaluate_strokes(args.drawings, args.threshold)
    for line in report.errors:
        print(f"failed: {line}", file=sys.stderr)
    width = max([len(name) for name in report.rows] + [len("mean")])
    lines = [f"{'drawing':<{width}}  " + "  ".join(f"{name:>19}" for name in SCORE_NAMES)]
    for name, row in [*report.rows.items(), *([("mean", report.means)] if report.rows else [])]:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{row[key]:>19.4g}" for key in SCORE_NAMES))
    emit(args.json, report.to_dict(), lines)
    if not report.rows:
        print(f"error: no drawing could be measured in {args.drawings}", file=sys.stderr)
        return 1
    return 1 if report.errors else 0
