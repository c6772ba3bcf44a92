"""`linedraw eval agreement A B`: how closely two folders of drawings of the same photos agree, pixel by pixel."""
from __future__ import annotations

import argparse
import sys

from linedraw.commands.options import add_json, emit


def register(eval_subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw eval agreement`."""
    parser = eval_subparsers.add_parser(
        "agreement", help="pixel agreement of two folders of drawings (e.g. a distilled student vs its teacher)",
        description="Match drawings by relative path (or unique stem) and report the mean absolute difference, the "
                    "fraction of pixels on the same side of --threshold, and the IoU of the line pixels.")
    parser.add_argument("a", help="folder of drawings (the reference, e.g. the teacher's)")
    parser.add_argument("b", help="folder of drawings to compare (resized to A's size where they differ)")
    parser.add_argument("--threshold", type=float, default=0.5, help="line / paper threshold in [0, 1]")
    add_json(parser, "the scores")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every matched pair was compared, 1 when some failed or none matched, 2 on bad input."""
    from linedraw.errors import UsageError
    from linedraw.eval.agreement import folder_agreement

    if not 0.0 < args.threshold < 1.0:
        raise UsageError("--threshold must be between 0 and 1")
    report = folder_agreement(args.a, args.b, args.threshold)
    for line in report.errors:
        print(f"failed: {line}", file=sys.stderr)
    if report.unmatched:
        print(f"warning: {len(report.unmatched)} drawings have no partner, e.g. {report.unmatched[0]}", file=sys.stderr)
    if not report.count:
        print("error: no pair of drawings could be compared", file=sys.stderr)
        return 1
    emit(args.json, {"count": report.count, **report.means, "threshold": args.threshold,
                     "unmatched": report.unmatched, "errors": report.errors},
         [f"{report.count} drawings: " + ", ".join(f"{k} {v:.4f}" for k, v in report.means.items())])
    return 1 if report.errors else 0
