"""The ASGI app of `linedraw serve` (Starlette) and the uvicorn runner.

Routes: `/` (the page), `/static/*` (its JS and CSS, shipped in the package), `GET /api/indexes`,
`POST /api/search?index=N&k=K&raw=0|1` (body: the image bytes), `GET /thumb/N/ID` and `GET /photo/N/ID` (only
items of index N, by id). Embedding runs in a bounded thread pool, never on the event loop. Every answer carries
a strict Content-Security-Policy, and only the bound host names are accepted (a DNS-rebinding page cannot read
the gallery).
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Iterable

import anyio
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from linedraw.errors import UsageError
from linedraw.serve.search import QueryError, SketchSearch, upload_too_large

STATIC = Path(__file__).with_name("static")

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:;"
                               " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
}


class SecurityHeaders:
    """ASGI middleware adding `SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> list[str]:
    """Host header values to accept for a server bound to `host`: its own name, and loopback's names for a
    loopback or wildcard bind; bound to every interface (0.0.0.0, ::), this machine's names and addresses, never
    any Host (a DNS-rebinding page would then pass); plus the names in `extra`."""
    wildcard = host in ("0.0.0.0", "::", "")
    names = set() if wildcard else {f"[{host}]" if ":" in host else host}
    if wildcard or host in ("127.0.0.1", "::1", "localhost"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    if wildcard:
        names |= _machine_names()
    return sorted(names | {f"[{name}]" if ":" in name and not name.startswith("[") else name for name in extra})


def _machine_names() -> set[str]:
    """This machine's host names and the addresses they resolve to."""
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        for *_, address in socket.getaddrinfo(socket.gethostname(), None):
            names.add(f"[{address[0]}]" if ":" in address[0] else address[0])
    except OSError:
        pass
    return {name for name in names if name}


def create_app(search: SketchSearch, *, workers: int = 2, host: str = "127.0.0.1",
               allowed: Iterable[str] = ()) -> Starlette:
    """The ASGI app serving `search`; at most `workers` queries are embedded at once (the rest wait their turn).
    Requests must name a host of `allowed_hosts(host, allowed)`."""
    if workers < 1:
        raise UsageError(f"workers must be at least 1, not {workers}")
    limiter = anyio.CapacityLimiter(workers)
    readers = anyio.CapacityLimiter(max(2, workers))  # thumbnails and photos: leave CPUs to the embedding

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def indexes(request: Request) -> Response:
        return JSONResponse({"indexes": search.describe(), "k": search.default_k,
                             "max_upload_bytes": search.max_upload_bytes, "max_pixels": search.max_pixels})

    async def query(request: Request) -> Response:
        slot = _int_param(request, "index", 0)
        k = _int_param(request, "k", search.default_k)
        raw = request.query_params.get("raw", "0") not in ("0", "", "false")
        data = await _read_body(request, search.max_upload_bytes)
        started = time.perf_counter()
        result = await anyio.to_thread.run_sync(search.search, data, slot, k, raw, limiter=limiter)
        result["seconds"] = round(time.perf_counter() - started, 4)
        return JSONResponse(result)

    async def thumbnail(request: Request) -> Response:
        data = await anyio.to_thread.run_sync(search.thumbnail, request.path_params["slot"],
                                              request.path_params["id"], limiter=readers)
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})

    async def photo(request: Request) -> Response:
        path, mime = await anyio.to_thread.run_sync(search.photo, request.path_params["slot"],
                                                    request.path_params["id"], limiter=readers)
        return FileResponse(path, media_type=mime, headers={"cache-control": "private, max-age=3600"})

    async def query_error(request: Request, exc: QueryError) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    routes = [
        Route("/", page),
        Route("/api/indexes", indexes),
        Route("/api/search", query, methods=["POST"]),
        Route("/thumb/{slot:int}/{id:int}", thumbnail),
        Route("/photo/{slot:int}/{id:int}", photo),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders),
                  Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host, allowed))]
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={QueryError: query_error, HTTPException: http_error})


def _int_param(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise QueryError(f"{name} must be a whole number, not {text[:40]!r}") from None


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise QueryError("the Content-Length header is not a number")
        if int(length) > limit:
            raise QueryError(upload_too_large(int(length), limit), 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise QueryError(upload_too_large(None, limit), 413)
    return bytes(body)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port` (port 0: any free port), so the caller knows the address at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    """http://HOST:PORT/ for a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def set_torch_threads(workers: int) -> int:
    """Give each of `workers` concurrent queries an equal share of the CPUs for torch (never more threads than
    torch had), so parallel queries do not oversubscribe the cores; returns the thread count set."""
    import torch

    threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // max(1, workers)))
    torch.set_num_threads(threads)
    return threads


def make_server(app: Starlette, log_level: str = "warning"):
    """A uvicorn Server for `app`; run it with `server.run(sockets=[bind(host, port)])`, stop it with
    `server.should_exit = True`."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off"))
