"""`linedraw serve`: a local web page to search sketch indexes by drawing (Starlette app on uvicorn).

`SketchSearch` opens the indexes and embeds queries; `create_app(search)` is the ASGI app; `serve(...)` runs it.
Starlette and uvicorn come with the `serve` extra (`pip install 'linedraw[serve]'`).
"""
from __future__ import annotations

from linedraw.serve.search import Gallery, QueryError, SketchSearch

__all__ = ["Gallery", "QueryError", "SketchSearch"]
