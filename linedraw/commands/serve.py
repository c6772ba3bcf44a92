"""`linedraw serve INDEX...`: a local web page where a sketch drawn on a canvas finds the matching indexed photos."""
from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw serve`."""
    from linedraw.commands.options import add_device

    parser = subparsers.add_parser(
        "serve", help="a local web page: draw a sketch, see the matching indexed photos",
        description="Serves a page with a drawing canvas (and sketch or photo upload) whose results follow the "
                    "sketch as it is drawn. With several indexes the page has a selector: indexes built with "
                    "different embedders give scores that cannot be compared, so they are never merged. Only "
                    "photos in the indexes are served, by id. Needs the serve extra: pip install 'linedraw[serve]'.")
    parser.add_argument("indexes", nargs="+", metavar="INDEX", help="index directories from `linedraw index build`")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 shares the "
                             "gallery with the whole network)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="another host name or address the page may be reached by (repeatable); with --host "
                             "0.0.0.0 this machine's own names and addresses are accepted, other names are refused "
                             "(a DNS-rebinding page cannot read the gallery)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    parser.add_argument("-k", type=int, default=24, help="results per query (default: 24)")
    parser.add_argument("--workers", type=int, default=0,
                        help="queries embedded at once (default: the CPU count, at most 4); torch gets the CPUs "
                             "divided among them")
    parser.add_argument("--max-upload", default="20M", help="largest upload in bytes, e.g. 20M (default: 20M)")
    parser.add_argument("--max-upload-pixels", type=int, default=40_000_000,
                        help="largest uploaded image in pixels (default: 40000000)")
    parser.add_argument("--nprobe", type=int, default=0, help="IVF cells to visit (default: the manifest's)")
    parser.add_argument("--ef-search", type=int, default=0, help="HNSW search breadth (default: the manifest's)")
    add_device(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linedraw.errors import MissingDependencyError, UsageError

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"linedraw serve needs {exc.name}: pip install 'linedraw[serve]'") from None
    from linedraw.convert import resolve_device
    from linedraw.retrieval.index import parse_size
    from linedraw.serve.app import bind, create_app, make_server, set_torch_threads, url_of
    from linedraw.serve.search import MAX_K, SketchSearch

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {args.port}")
    if not 1 <= args.k <= MAX_K:
        raise UsageError(f"-k must be between 1 and {MAX_K}, not {args.k}")
    if args.workers < 0:
        raise UsageError(f"--workers must be at least 1 (or 0 for the default), not {args.workers}")
    if args.max_upload_pixels < 1:
        raise UsageError(f"--max-upload-pixels must be at least 1, not {args.max_upload_pixels}")
    max_upload = parse_size(args.max_upload, "--max-upload")
    if max_upload < 1:
        raise UsageError(f"--max-upload must be at least 1 byte, not {args.max_upload!r}")
    workers = args.workers or min(4, os.cpu_count() or 1)

    sock = bind(args.host, args.port)  # before loading models: a busy port is reported at once
    try:
        set_torch_threads(workers)
        search = SketchSearch(args.indexes, str(resolve_device(args.device)), nprobe=args.nprobe,
                              ef_search=args.ef_search, max_upload_bytes=max_upload, max_pixels=args.max_upload_pixels,
                              default_k=args.k)
        try:
            server = make_server(create_app(search, workers=workers, host=args.host, allowed=args.allowed_host))
            count = sum(g.count for g in search.galleries)
            print(f"serving {len(search.galleries)} index(es), {count} items, at {url_of(sock)} (Ctrl-C stops)",
                  file=sys.stderr, flush=True)
            server.run(sockets=[sock])
        finally:
            search.close()
    finally:
        sock.close()
    return 0
