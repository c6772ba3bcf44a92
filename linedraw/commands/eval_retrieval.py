"""`linedraw eval retrieval`: sketch-based retrieval metrics of a drawing index against the raw-photo baseline."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

METRICS_HELP = """\
metrics (SBIR literature; averaged over queries; the whole gallery is ranked):
  mAP@all   non-interpolated average precision, (1/R) sum_i P@i rel_i, R = relevant items (same class)
  mAP@200   (1/min(200, R)) sum_{i<=200} P@i rel_i (the ZS-SBIR normalisation, without VOC interpolation)
  P@K       relevant items in the top K / K
  R@K       relevant items in the top K / R
  acc@K     instance level: share of queries `<photo-id>-N.png` whose own photo is in the top K
K = 1, 5, 10, 20, 50 (acc: 1, 10). Classes are parent folder names of queries and gallery photos.
An index built with both views (drawing,photo; the default with a checkpoint) is evaluated alone: raw photos,
drawings and the fused score are columns of one table. An index of drawings only is compared with the same
photos indexed raw (--raw), with the same embedder.
"""


def register(eval_subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw eval retrieval`."""
    from linedraw.commands.options import add_device, add_json, add_quiet, positive_int, share

    parser = eval_subparsers.add_parser(
        "retrieval", help="mAP / P@K / R@K / acc@K of sketch queries against an index and the raw-photo baseline",
        description="Embed the query sketches, rank the whole gallery for each, and print the retrieval metrics "
                    "of the index beside those of the same photos indexed raw (the no-drawing baseline).",
        epilog=METRICS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index built with `linedraw index build` (class folders)")
    parser.add_argument("--queries", required=True, help="folder of query sketches in class folders")
    parser.add_argument("--baseline-index", help="raw-photo index to compare with; built here if missing "
                                                 "(default: a temporary one)")
    parser.add_argument("--no-baseline", action="store_true", help="evaluate --index alone")
    parser.add_argument("--fuse-weight", type=share, metavar="W",
                        help="two views: the drawing's weight in the fused column (default: the manifest's)")
    parser.add_argument("--sweep", action="store_true",
                        help="two views: also print mAP@all, P@1 and acc@10 for fuse weights 0, 0.1, ..., 1")
    add_json(parser, "the metrics")
    add_device(parser)
    parser.add_argument("--batch-size", type=positive_int, default=32,
                        help="images embedded at once (default: 32)")
    add_quiet(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linedraw.commands.options import emit
    from linedraw.convert import resolve_device
    from linedraw.errors import UsageError
    from linedraw.retrieval.evaluate import embed_queries, evaluate, format_table, sweep, view_columns
    from linedraw.retrieval.gallery import Encoding, PhotoEncoder, build_index, encoding_of
    from linedraw.retrieval.index import GalleryIndex

    device = resolve_device(args.device)
    index = GalleryIndex.open(args.index)  # checked before the embedder is loaded or any query embedded
    m = index.manifest
    drawing_encoder = PhotoEncoder(encoding_of(m), device, args.batch_size)
    queries = embed_queries(args.queries, drawing_encoder, args.batch_size, not args.quiet)
    two_views = len(index.views) > 1
    if (args.sweep or args.fuse_weight is not None) and not two_views:
        raise UsageError(f"--sweep and --fuse-weight need an index of drawings and photos; {args.index} holds "
                         f"{index.views[0]}s only (build it with --views drawing,photo)")
    columns = view_columns(index, queries, args.fuse_weight)
    swept = sweep(index, queries) if args.sweep else None
    photos = sorted({item.path for item in index.all_items()})
    index.close()

    if not args.no_baseline and m.get("checkpoint") and not two_views:
        temporary = None
        baseline_dir = args.baseline_index
        if baseline_dir is None:
            temporary = tempfile.mkdtemp(prefix="linedraw-baseline-")
            baseline_dir = os.path.join(temporary, "raw")
        try:
            if not os.path.isdir(baseline_dir):
                raw = PhotoEncoder(Encoding(m["embedder"], None), device, args.batch_size,
                                   embedder=drawing_encoder.embedder)
                print(f"building the raw-photo baseline index ({len(photos)} photos) in {baseline_dir}",
                      file=sys.stderr)
                build_index(photos, baseline_dir, raw.encoding, kind="flat", encoder=raw,
                            batch_size=args.batch_size, progress=not args.quiet)
            with GalleryIndex.open(baseline_dir) as baseline:
                if baseline.manifest["embedder"] != m["embedder"] or baseline.manifest.get("checkpoint"):
                    raise UsageError(f"--baseline-index {baseline_dir} is not a raw-photo index with embedder "
                                     f"{m['embedder']}")
                columns = {"raw photos": evaluate(baseline, queries), **columns}
        finally:
            if temporary:
                shutil.rmtree(temporary, ignore_errors=True)

    report = [f"embedder {m['embedder']}, {len(queries.paths)} queries from {args.queries}", format_table(columns)]
    payload = {"embedder": m["embedder"], "checkpoint": m.get("checkpoint"), "metrics": columns}
    if swept is not None:
        payload["sweep"] = swept
        names = [k for k in swept[0] if k != "fuse_weight"]
        report += ["", "| fuse weight | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        report += [f"| {row['fuse_weight']:.1f} | " + " | ".join(f"{row[n]:.4f}" for n in names) + " |"
                   for row in swept]
    emit(args.json, payload, report)
    return 0
