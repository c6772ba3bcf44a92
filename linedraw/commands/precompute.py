"""`linedraw precompute PHOTOS... -o DIR --estimator hed|midas[:TYPE]`: write geometry target maps by stem."""
from __future__ import annotations

import argparse
import sys

from linedraw.commands.options import add_device, add_output, add_quiet, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw precompute`."""
    parser = subparsers.add_parser(
        "precompute", help="write geometry target maps (depth or edges) for photos, resumably",
        description="Run a target estimator on photos and write <out>/<photo stem>.png (16-bit). Photos whose map "
                    "exists are skipped, so an interrupted run continues where it stopped. Exit code 1 if any "
                    "photo could not be read.")
    parser.add_argument("photos", nargs="+", help="photo files, folders (searched recursively) or glob patterns")
    add_output(parser, "folder for the target maps", metavar="DIR")
    parser.add_argument("--estimator", required=True,
                        help="hed[:WEIGHTS_H5] (edges, offline), midas[:MODEL_TYPE] (depth; downloads through "
                             "torch.hub; types DPT_Large (default), DPT_Hybrid, MiDaS, MiDaS_small)")
    add_device(parser)
    parser.add_argument("--size", type=positive_int, default=None,
                        help="cap the longer side the estimator sees (maps are resized back to the photo's size)")
    parser.add_argument("--overwrite", action="store_true", help="recompute maps that already exist")
    add_quiet(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle `linedraw precompute`; returns 1 when any photo failed, 2 on a usage error."""
    from linedraw.convert import resolve_device
    from linedraw.errors import MissingFileError
    from linedraw.images import list_images
    from linedraw.teachers.targets import build_estimator, precompute

    device = resolve_device(args.device)
    photos = [path for path, _ in list_images(args.photos)]
    if not photos:
        raise MissingFileError(f"no images found in {' '.join(args.photos)}")
    estimator = build_estimator(args.estimator)
    summary = precompute(photos, args.output, estimator, size=args.size, skip_existing=not args.overwrite,
                         device=device, progress=not args.quiet)
    print(f"{args.output}: {summary}")
    for photo, reason in summary.failed:
        print(f"failed: {photo}: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0
