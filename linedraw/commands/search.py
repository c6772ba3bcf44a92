"""`linedraw search INDEX QUERY...`: rank the indexed photos for a sketch (or a photo, drawn first)."""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw search`."""
    from linedraw.commands.options import add_device, non_negative_int, positive_int, share

    parser = subparsers.add_parser(
        "search", help="find indexed photos that match a sketch",
        description="A query sketch (grey-level image) is embedded as is; a colour photo is first converted to "
                    "a drawing with the index's checkpoint unless --raw. Scores are cosine similarities "
                    "(approximate for IVF-PQ).")
    parser.add_argument("index", help="index directory from `linedraw index build`")
    parser.add_argument("queries", nargs="+", metavar="QUERY", help="sketch or photo files, folders or globs")
    parser.add_argument("-k", type=positive_int, default=10, help="results per query (default: 10)")
    parser.add_argument("--raw", action="store_true", help="embed query photos as they are (no conversion)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE|-",
                        help="results as JSON lines, one object per query: on stdout instead of the ranked list "
                             "(`--json` or `--json -`), or also written to FILE")
    parser.add_argument("--html", metavar="OUT.html", help="also write a results page with thumbnails")
    parser.add_argument("--nprobe", type=non_negative_int, default=0,
                        help="IVF cells to visit (default: 0, the manifest's)")
    parser.add_argument("--ef-search", type=non_negative_int, default=0,
                        help="HNSW search breadth (default: 0, the manifest's)")
    parser.add_argument("--fuse-weight", type=share, metavar="W",
                        help="an index of drawings and photos: rank by W * cos(drawing) + (1 - W) * cos(photo); "
                             "1 = drawings only, 0 = photos only (default: the manifest's)")
    parser.add_argument("--dedupe", type=share, nargs="?", const=0.95, default=0.0, metavar="COSINE",
                        help="collapse near-duplicate photos: drop a result whose photo embedding is at least "
                             "COSINE close to a better one's (default when given: 0.95)")
    parser.add_argument("--under", metavar="DIR", help="only results from photos under this folder")
    add_device(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linedraw.convert import resolve_device
    from linedraw.images import ImageError, display_path, list_images, open_image, write_text_atomic
    from linedraw.retrieval.gallery import PhotoEncoder, encoding_of
    from linedraw.retrieval.index import GalleryIndex, configure_search

    index = GalleryIndex.open(args.index)  # checked before the embedder is loaded or any query embedded
    configure_search(index.index, args.nprobe, args.ef_search)
    m = index.manifest
    encoder = PhotoEncoder(encoding_of(m), resolve_device(args.device))
    results, failed = [], 0
    for path, _ in list_images(args.queries):
        try:
            image = open_image(path, mode="RGB")
        except ImageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        scores, ids = index.search(encoder.query(image, raw=args.raw), args.k, fuse_weight=args.fuse_weight,
                                   under=args.under, dedupe=args.dedupe)
        hits = []
        for score, item in zip(scores[0].tolist(), index.items(ids[0])):
            if item is not None:
                hits.append({"path": item.path, "object": item.object, "box": item.box, "score": round(score, 4)})
        results.append({"query": display_path(path), "results": hits})
        if args.json == "-":
            print(json.dumps(results[-1]))
        else:
            print(display_path(path))
            for rank, hit in enumerate(hits, 1):
                obj = f"  [{hit['object']} {hit['box']}]" if hit["object"] else ""
                print(f"  {rank:>3}  {hit['score']:.4f}  {display_path(hit['path'])}{obj}")
    index.close()
    if args.json not in (None, "-"):
        write_text_atomic(args.json, "".join(json.dumps(result) + "\n" for result in results))
    if args.html:
        write_html(results, args.html)
        print(f"wrote {args.html}", file=sys.stderr)
    return 1 if failed else 0


def _thumbnail(path: str, box=None, size: int = 160) -> str:
    """A small JPEG of the photo (or its object box) as a data: URI; '' when it cannot be read any more."""
    from linedraw.images import ImageError, open_image

    try:
        image = open_image(path, mode="RGB")
    except ImageError:
        return ""
    if box:
        image = image.crop(tuple(box))
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_html(results: list[dict], path: str) -> None:
    """A self-contained results page: each query's thumbnail then its ranked hits; every name is escaped."""
    from linedraw.images import display_path

    rows = []
    for result in results:
        cells = [f'<figure class="query"><img src="{_thumbnail(result["query"])}" alt="">'
                 f'<figcaption>{html.escape(result["query"])}</figcaption></figure>']
        for rank, hit in enumerate(result["results"], 1):
            label = os.path.basename(display_path(hit["path"])) + (f" [{hit['object']}]" if hit["object"] else "")
            cells.append(f'<figure><img src="{_thumbnail(hit["path"], hit["box"])}" alt="" '
                         f'title="{html.escape(display_path(hit["path"]), quote=True)}"><figcaption>{rank}. '
                         f'{html.escape(label)}<br>{hit["score"]:.3f}</figcaption></figure>')
        rows.append(f'<section>{"".join(cells)}</section>')
    page = ("<!doctype html><meta charset='utf-8'><title>linedraw search</title><style>"
            "section{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0;border-bottom:1px solid #ccc}"
            "figure{margin:0;width:170px;font:12px sans-serif;word-break:break-all}"
            "figure.query{outline:2px solid #36c}img{max-width:160px;max-height:160px}</style>"
            + "".join(rows))
    from linedraw.images import write_text_atomic

    write_text_atomic(path, page)
