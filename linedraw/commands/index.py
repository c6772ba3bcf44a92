"""`linedraw index build|add|remove|info|merge`: photo galleries indexed by the embeddings of their drawings."""
from __future__ import annotations

import argparse
import json
import os
import sys

from linedraw.commands.options import (add_device, add_engine, add_json, add_output, add_quiet, positive_int,
                                      seconds, share)

BUILD_EPILOG = """\
index kinds (Faiss guidelines): flat = exact inner product (auto up to 50,000 items); hnsw = HNSW32 graph,
fast and accurate while vectors + graph fit --memory; ivfpq = IVF + product quantisation, dim/8 (max 64)
bytes per item, lists kept on disk (memory-mapped) when the codes exceed --memory or with --on-disk;
its candidates are re-scored exactly with float16 copies of the vectors kept on disk (memory-mapped too).

views: with a checkpoint, each photo is embedded twice by default, as its drawing and as the raw photo (one
conversion, one more embedder pass), and searches rank by the fused score
w * cos(query, drawing) + (1 - w) * cos(query, photo); `search --fuse-weight W` changes w per query.

an interrupted build resumes: run the same command again; finished chunks in OUTPUT.work/ are reused.
sharded builds: `accelerate launch -m linedraw index build ... --like TRAINED` runs one shard per process
(OUTPUT.shardRRR-of-NNN); `linedraw index merge -o OUTPUT OUTPUT.shard*` joins them.
"""


def add_wait_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", type=seconds, default=0.0, metavar="SECONDS",
                        help="if another writer holds the index, wait up to this long for it "
                             "(default: 0, fail at once)")


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    add_device(parser)
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="photos converted/embedded at once (default: 16)")
    parser.add_argument("--chunk-size", type=positive_int, default=256,
                        help="photos per resumable work chunk (default: 256)")
    add_quiet(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw index` and its sub-commands."""
    parser = subparsers.add_parser("index", help="build and maintain a photo index for sketch search")
    sub = parser.add_subparsers(dest="index_command", metavar="INDEX_COMMAND", required=True)

    build = sub.add_parser("build", help="index photos (each by its drawing's embedding)", epilog=BUILD_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Draw every photo with --checkpoint, embed the drawing with --embedder and "
                                       "write a Faiss index with the photos' paths, resumably.")
    build.add_argument("gallery", nargs="+", help="photo files, folders or glob patterns")
    add_output(build, "index directory to write: new, empty, or an index to replace (any other folder, and a "
                      "folder inside the photos, is refused)", metavar="INDEX")
    build.add_argument("--checkpoint", default="contour", help="generator that draws the photos (default: contour)")
    build.add_argument("--raw", action="store_true", help="embed the photos themselves (the no-drawing baseline; "
                                                          "the same as --views photo)")
    build.add_argument("--views", help="what to embed per photo: drawing, photo, or drawing,photo (default: "
                                       "drawing,photo with a checkpoint, photo with --raw)")
    build.add_argument("--fuse-weight", type=share, metavar="W",
                       help="two views: the drawing's default weight in the fused score, recorded in the "
                            "manifest (default: 0.6, chosen on Sketchy; see README)")
    build.add_argument("--embedder", default="efficientnet-lite0",
                       help="openclip:MODEL:PRETRAINED, efficientnet-lite0 (offline), timm:MODEL[:WEIGHTS], "
                            "or a trained embedder folder (default: efficientnet-lite0)")
    build.add_argument("--kind", default="auto", choices=("auto", "flat", "hnsw", "ivfpq"),
                       help="Faiss index kind, see below (default: auto)")
    build.add_argument("--memory", default="8G", help="memory budget for the index, e.g. 16G (default: 8G)")
    build.add_argument("--on-disk", action="store_true", default=None,
                       help="keep IVF-PQ inverted lists on disk (default: only when over --memory)")
    build.add_argument("--objects", choices=("boxes", "masks"),
                       help="index each object: crop to its box (boxes) or also whiten outside its mask (masks)")
    build.add_argument("--object-source", help="COCO-style boxes JSON, or a folder of <stem>.png label masks")
    build.add_argument("--min-object-area", type=share, default=0.01,
                       help="smallest object, share of the photo (default: 0.01)")
    build.add_argument("--draw-size", type=positive_int, default=256,
                       help="short side photos are drawn at before embedding (default: 256)")
    build.add_argument("--like", help="copy encoding and trained IVF-PQ quantizer from this index (for shards)")
    build.add_argument("--shard", help="I/N: index every N-th photo from the I-th (default under accelerate "
                                       "launch: this process's rank / world size)")
    add_runtime_args(build)
    add_engine(build)
    add_wait_arg(build)
    build.set_defaults(func=run_build)

    add = sub.add_parser("add", help="add new or changed photos (by content hash); unchanged ones are skipped",
                         description="Draw and embed photos not yet in the index (or changed since, by content "
                                     "hash) with the index's own checkpoint and embedder.")
    add.add_argument("index", help="index directory from `linedraw index build`")
    add.add_argument("paths", nargs="+", help="photo files, folders or glob patterns")
    add_runtime_args(add)
    add_wait_arg(add)
    add.set_defaults(func=run_add)

    remove = sub.add_parser("remove", help="remove photos (files, whole folders or globs) from an index",
                            description="Remove the items of the named photos from the index.")
    remove.add_argument("index", help="index directory from `linedraw index build`")
    remove.add_argument("paths", nargs="+", help="photo files, folders or glob patterns, as `index add` takes them; "
                                                 "matched against the indexed paths, so photos already deleted "
                                                 "from disk can be removed too")
    add_wait_arg(remove)
    remove.set_defaults(func=run_remove)

    info = sub.add_parser("info", help="print an index's manifest summary",
                          description="Print what an index holds and how it was built (its manifest).")
    info.add_argument("index", help="index directory from `linedraw index build`")
    add_json(info, "the full manifest")
    info.set_defaults(func=run_info)

    merge = sub.add_parser("merge", help="merge shard indexes built alike (see `index build --like`)",
                           description="Join shard indexes built with the same encoding and trained quantizer "
                                       "into one index.")
    merge.add_argument("shards", nargs="+", help="shard index directories")
    add_output(merge, "index directory to write: new, empty, or an index to replace", metavar="INDEX")
    add_wait_arg(merge)
    merge.set_defaults(func=run_merge)


def _print_report(report, verb: str) -> int:
    parts = [f"{report.added} items {verb}"]
    if report.replaced:
        parts.append(f"{report.replaced} changed photos re-embedded")
    if report.unchanged:
        parts.append(f"{report.unchanged} unchanged skipped")
    if report.no_objects:
        parts.append(f"{report.no_objects} photos without objects")
    if report.failures:
        parts.append(f"{len(report.failures)} photos failed")
    print(", ".join(parts))
    for failure in report.failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if report.failures else 0


def run_build(args: argparse.Namespace) -> int:
    from linedraw.convert import resolve_device
    from linedraw.errors import UsageError
    from linedraw.retrieval.gallery import Encoding, build_index, parse_shard
    from linedraw.retrieval.index import parse_size

    if args.objects and not args.object_source:
        raise UsageError("--objects needs --object-source (boxes JSON or masks folder)")
    try:
        shard = parse_shard(args.shard)
    except UsageError as exc:
        raise UsageError(f"--{exc}") from None
    output = args.output
    if shard[1] > 1:
        output = f"{output.rstrip(os.sep)}.shard{shard[0]:03d}-of-{shard[1]:03d}"
    views = args.views or ("photo" if args.raw else "drawing,photo")
    if args.raw and args.views and args.views != "photo":
        raise UsageError("--raw embeds the raw photos only; drop it to use --views " + args.views)
    try:
        encoding = Encoding(args.embedder, None if args.raw or views == "photo" else args.checkpoint, args.objects,
                            os.path.abspath(args.object_source) if args.object_source else None,
                            args.min_object_area, args.draw_size, views=views, fuse_weight=args.fuse_weight)
    except UsageError as exc:
        raise UsageError(f"--{exc}") from None
    memory = parse_size(args.memory, "--memory")
    common = dict(kind=args.kind, memory=memory, on_disk=args.on_disk, like=args.like, shard=shard,
                  batch_size=args.batch_size, chunk_size=args.chunk_size, progress=not args.quiet, wait=args.wait)
    if args.engine == "ray":
        from linedraw.engines.ray import build_index_ray

        report = build_index_ray(args.gallery, output, encoding, device=args.device, **common)
    else:
        report = build_index(args.gallery, output, encoding, device=resolve_device(args.device), **common)
    return _print_report(report, f"indexed in {output}")


def run_add(args: argparse.Namespace) -> int:
    from linedraw.convert import resolve_device
    from linedraw.retrieval.gallery import add_to_index

    report = add_to_index(args.index, args.paths, device=resolve_device(args.device),
                          batch_size=args.batch_size, chunk_size=args.chunk_size, progress=not args.quiet,
                          wait=args.wait)
    return _print_report(report, f"added to {args.index}")


def run_remove(args: argparse.Namespace) -> int:
    from linedraw.retrieval.gallery import remove_from_index

    removed, unmatched = remove_from_index(args.index, args.paths, wait=args.wait)
    print(f"{removed} items removed from {args.index}")
    for path in unmatched:
        print(f"  not in the index: {path}", file=sys.stderr)
    return 1 if unmatched else 0


def run_info(args: argparse.Namespace) -> int:
    from linedraw.retrieval.index import GalleryIndex, manifest_summary

    with GalleryIndex.open(args.index) as index:
        if args.json == "-":
            print(json.dumps(index.manifest, indent=2, sort_keys=True))
            return 0
        if args.json:
            from linedraw.eval import write_json

            write_json(args.json, index.manifest)
        summary = manifest_summary(index.manifest)
        photos = index.db.execute("SELECT COUNT(DISTINCT path) FROM items").fetchone()[0]
        disk = sum(os.path.getsize(os.path.join(args.index, f)) for f in os.listdir(args.index))
        summary.update(photos=photos, disk_bytes=disk)
        width = max(map(len, summary))
        for key, value in summary.items():
            print(f"{key:<{width}}  {value}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from linedraw.retrieval.index import merge_indexes

    merged = merge_indexes(args.output, args.shards, wait=args.wait)
    print(f"merged {len(args.shards)} shards into {args.output}: {merged.count} items")
    merged.close()
    return 0
