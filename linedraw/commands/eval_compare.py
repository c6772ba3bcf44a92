"""`linedraw eval compare A B`: the seed paper's table (recognizability, edge F-score, user study) for checkpoints."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from linedraw.commands.options import add_device, add_output, add_quiet


def register(eval_subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw eval compare`."""
    parser = eval_subparsers.add_parser(
        "compare", help="convert a photo set with two checkpoints and print recognizability / edges / study table",
        description="Convert --photos with each checkpoint into OUT/drawings/<name>/ (resumable), score them with "
                    "`eval clip-score` (or the offline classifier) and, where ground truth exists, `eval edges`, "
                    "export a user study to OUT/study/, and print a Markdown table (also OUT/compare.md).")
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="shipped names or paths (two or more)")
    parser.add_argument("--photos", required=True, help="folder of photos")
    add_output(parser, "output folder", metavar="OUTDIR", old_out=True)
    parser.add_argument("--gt", help="BSDS-style ground truth (<stem>.npz); default: PHOTOS/../groundTruth if present")
    parser.add_argument("--no-edges", action="store_true", help="skip the edge benchmark even if ground truth exists")
    parser.add_argument("--edge-thresholds", type=int, default=99,
                        help="thresholds of the edge benchmark (default: 99)")
    parser.add_argument("--workers", type=int, default=1, help="processes for the edge benchmark")
    parser.add_argument("--classifier", choices=["clip", "efficientnet-lite0"], default="clip",
                        help="recognizability classifier, as in `eval clip-score` (default: clip)")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name")
    parser.add_argument("--pretrained", default="openai", help="open_clip pretrained tag or a local weights file")
    parser.add_argument("--labels", metavar="FILE", help="label vocabulary, one per line")
    parser.add_argument("--template", default="a drawing of a {}", help="prompt for drawings (default: %(default)r)")
    parser.add_argument("--photo-template", default="a photo of a {}",
                        help="prompt for photos (default: %(default)r)")
    parser.add_argument("--size", type=int, default=512, help="short side the checkpoints draw at (0 = native)")
    parser.add_argument("--n", type=int, default=50, help="photos in the study (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the study's photo choice (default: 0)")
    add_device(parser)
    add_quiet(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linedraw.commands.eval_clip import build_classifier
    from linedraw.errors import UsageError
    from linedraw.eval import write_json
    from linedraw.eval.compare import compare, format_table

    if len(args.checkpoints) < 2:
        raise UsageError("compare needs at least two checkpoints")
    gt = args.gt
    default_gt = Path(args.photos).resolve().parent / "groundTruth"
    if gt is None and default_gt.is_dir():
        gt = str(default_gt)
        print(f"ground truth: {gt}")
    if args.no_edges:
        gt = None
    classifier, vocabulary = build_classifier(args)
    result = compare(args.checkpoints, args.photos, args.output, classifier, vocabulary, gt=gt, size=args.size,
                     device=args.device, edge_thresholds=args.edge_thresholds, study_n=args.n, seed=args.seed,
                     workers=args.workers, progress=not args.quiet)
    table = format_table(result)
    print(table)
    out = Path(args.output)
    (out / "compare.md").write_text(table + "\n", encoding="utf-8")
    write_json(out / "compare.json", {
        "methods": dict(zip(result.methods, args.checkpoints)),
        "recognizability": {m: r.to_dict() for m, r in result.recognizability.items()},
        "edges": {m: e.to_dict() for m, e in result.edges.items()},
        "study": str(out / "study"), "errors": result.errors})
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if result.errors else 0

