"""`linedraw eval edges`: the BSDS500 boundary benchmark (ODS/OIS/AP) of drawings against human boundaries."""
from __future__ import annotations

import argparse
import sys

from linedraw.commands.options import add_json, add_quiet, emit


def register(eval_subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw eval edges`."""
    parser = eval_subparsers.add_parser(
        "edges", help="BSDS500 boundary benchmark (ODS, OIS, AP) of drawings against human boundary maps",
        description="Match each drawing (dark lines on white; edge probability = 1 - drawing) to all annotators' "
                    "boundaries of the image with the same stem, as the BSDS500 benchmark does (pyEdgeEval). "
                    "Slow by nature: about a second per threshold and annotator on one core; use --workers, "
                    "fewer --thresholds for a quick look, and --counts to resume.")
    parser.add_argument("--drawings", required=True, help="folder of drawings (or edge maps with --edge-maps)")
    parser.add_argument("--gt", required=True, help="folder of <stem>.npz with 'boundaries' (annotators, H, W) bool, "
                                                   "e.g. bsds500/val/groundTruth")
    parser.add_argument("--thresholds", type=int, default=99, help="number of thresholds (default: 99)")
    parser.add_argument("--max-dist", type=float, default=0.0075,
                        help="match tolerance as a fraction of the image diagonal (default: 0.0075)")
    parser.add_argument("--no-thin", action="store_true", help="do not thin the thresholded maps")
    parser.add_argument("--nms", action="store_true", help="non-maximum suppression first (for soft edge maps)")
    parser.add_argument("--edge-maps", action="store_true",
                        help="inputs are edge maps (white edges on black, e.g. HED), not drawings")
    parser.add_argument("--workers", type=int, default=1, help="processes matching images in parallel")
    parser.add_argument("--counts", metavar="FILE.json", help="keep per-image counts here; a rerun resumes")
    add_json(parser, "the scores")
    add_quiet(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linedraw.eval.edges import evaluate_edges, iter_report_lines

    report = evaluate_edges(args.drawings, args.gt, n_thresholds=args.thresholds, max_dist=args.max_dist,
                            thin=not args.no_thin, nms=args.nms, edge_maps=args.edge_maps,
                            workers=args.workers, counts_file=args.counts, progress=not args.quiet)
    emit(args.json, report.to_dict(), iter_report_lines(report))
    if report.scores is None:
        print("error: no drawing could be evaluated", file=sys.stderr)
        return 1
    return 1 if report.errors else 0
