"""The search behind `linedraw serve`: open indexes once, embed uploaded queries, look up and read photos.

Thread model: each index is owned by one thread of its own (its SQLite connection may only be used by the thread
that opened it, and a Faiss search of one query is short next to embedding it); queries are embedded by whatever
thread calls `search`, so many run at once on the shared, read-only models. Photo-to-drawing conversions take
turns: a tiled conversion puts hooks on the shared generator.
"""
from __future__ import annotations

import io
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from PIL import Image

from linedraw.convert import PhotoSizeError
from linedraw.errors import LinedrawError, UsageError
from linedraw.images import ImageError, ImageTooLargeError, display_path, open_image
from linedraw.retrieval.gallery import PhotoEncoder, encoding_of, looks_like_drawing
from linedraw.retrieval.index import GalleryIndex, Item, configure_search

T = TypeVar("T")

#: Most results one query may ask for.
MAX_K = 200
#: Long side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 256


class QueryError(LinedrawError):
    """A query the server refuses; `status` is the HTTP status to answer with (400, 404 or 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Hit:
    """One search result."""

    id: int
    score: float
    item: Item


class Gallery:
    """One opened index and the thread that owns it; `call(fn, index, ...)` runs `fn` on that thread."""

    def __init__(self, directory: str | os.PathLike, nprobe: int = 0, ef_search: int = 0) -> None:
        self.directory = Path(directory)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"index-{self.directory.name}")
        try:
            self.index: GalleryIndex = self._thread.submit(self._open, nprobe, ef_search).result()
        except BaseException:
            self._thread.shutdown()
            raise
        self.manifest = dict(self.index.manifest)
        self.count = int(self.index.count)
        self.name = self.directory.name or display_path(self.directory)

    def _open(self, nprobe: int, ef_search: int) -> GalleryIndex:
        index = GalleryIndex.open(self.directory)
        configure_search(index.index, nprobe, ef_search)
        return index

    def call(self, fn: Callable[..., T], *args) -> T:
        """`fn(self.index, *args)` on the index's own thread; waits for the result."""
        return self._thread.submit(fn, self.index, *args).result()

    def item(self, item_id: int) -> Item | None:
        """The indexed item `item_id`, or None when the index has no such id."""
        return self.call(lambda index: index.items([item_id])[0])

    def close(self) -> None:
        """Close the index on its thread and stop the thread."""
        self.call(lambda index: index.close())
        self._thread.shutdown()


class SketchSearch:
    """Opens `indexes` (directories from `linedraw index build`) and answers queries against any of them.

    Indexes built the same way share one `PhotoEncoder`; models are loaded (and run once) up front, so the
    first query is not slow and no two threads race to load them.
    """

    def __init__(self, indexes: Sequence[str | os.PathLike], device: str = "cpu", *, nprobe: int = 0,
                 ef_search: int = 0, max_upload_bytes: int = 20 << 20, max_pixels: int = 40_000_000,
                 default_k: int = 24) -> None:
        if not indexes:
            raise UsageError("indexes: name at least one index directory")
        for name, value, low in (("max_upload_bytes", max_upload_bytes, 1), ("max_pixels", max_pixels, 1),
                                 ("default_k", default_k, 1)):
            if value < low:
                raise UsageError(f"{name} must be at least {low}, not {value}")
        self.max_upload_bytes, self.max_pixels = int(max_upload_bytes), int(max_pixels)
        self.default_k = min(int(default_k), MAX_K)
        self.galleries: list[Gallery] = []
        self.encoders: list[PhotoEncoder] = []
        self._conversion_lock = threading.Lock()
        try:
            shared: list[PhotoEncoder] = []
            for directory in indexes:
                gallery = Gallery(directory, nprobe, ef_search)
                self.galleries.append(gallery)
                encoding = encoding_of(gallery.manifest)
                encoder = next((e for e in shared if e.encoding == encoding), None)
                if encoder is None:
                    encoder = PhotoEncoder(encoding, device)
                    _ = encoder.converter  # load now: threads would race to load it lazily
                    encoder([Image.new("L", (64, 64), 255)], convert=False)
                    shared.append(encoder)
                self.encoders.append(encoder)
        except BaseException:
            self.close()
            raise

    def describe(self) -> list[dict]:
        """What the page shows in its index selector."""
        return [{"id": slot, "name": g.name, "path": display_path(g.directory), "count": g.count,
                 "embedder": g.manifest.get("embedder"), "checkpoint": g.manifest.get("checkpoint")}
                for slot, g in enumerate(self.galleries)]

    def gallery(self, slot: int) -> Gallery:
        """The index numbered `slot` (its position on the command line, from 0)."""
        if not 0 <= slot < len(self.galleries):
            raise QueryError(f"no index number {slot} (there are {len(self.galleries)})", 404)
        return self.galleries[slot]

    def decode(self, data: bytes) -> Image.Image:
        """An uploaded image's bytes -> RGB image, within the size and pixel limits (QueryError otherwise)."""
        if len(data) > self.max_upload_bytes:
            raise QueryError(upload_too_large(len(data), self.max_upload_bytes), 413)
        if not data:
            raise QueryError("the upload is empty: send an image (PNG, JPEG, WebP, ...)")
        # open_image reads files only; a private temporary file keeps its checks (bombs, EXIF, modes) in one place
        with tempfile.NamedTemporaryFile(prefix="linedraw-upload-") as handle:
            handle.write(data)
            handle.flush()
            try:
                return open_image(handle.name, mode="RGB", max_pixels=self.max_pixels)
            except ImageTooLargeError:
                raise QueryError(f"the uploaded image has more than {self.max_pixels} pixels, this server's "
                                 f"limit (max_pixels)", 413) from None
            except ImageError as exc:
                raise QueryError(f"the upload is not a usable image: {exc.reason}") from None

    def search(self, data: bytes, slot: int = 0, k: int | None = None, raw: bool = False) -> dict:
        """Rank index `slot`'s photos for an uploaded sketch (or photo, drawn first unless `raw`).

        Returns {"query": "sketch" | "photo" | "photo (raw)", "index": slot, "results": [hit dicts, best first]}.
        """
        gallery = self.gallery(slot)
        k = self.default_k if k is None else k
        if not 1 <= k <= MAX_K:
            raise QueryError(f"k must be between 1 and {MAX_K}, not {k}")
        image = self.decode(data)
        encoder = self.encoders[slot]
        sketch = looks_like_drawing(image)
        try:
            if sketch or raw or encoder.encoding.checkpoint is None:
                vectors = encoder.query(image, raw=raw)
            else:
                with self._conversion_lock:
                    vectors = encoder.query(image, raw=raw)
        except PhotoSizeError as exc:  # a photo the converter refuses (a long strip, say): the client's to fix
            raise QueryError(f"the uploaded photo cannot be drawn: {exc}") from None
        hits = gallery.call(_search, vectors, k)
        return {"query": "sketch" if sketch else "photo (raw)" if raw else "photo", "index": slot,
                "results": [hit_json(slot, hit) for hit in hits]}

    def photo(self, slot: int, item_id: int) -> tuple[str, str]:
        """(path, MIME type) of an indexed photo; QueryError 404 when the id is unknown or the file unreadable."""
        item = self._item(slot, item_id)
        try:
            with Image.open(item.path) as image:
                mime = Image.MIME.get(image.format or "")
        except (OSError, ValueError, Image.DecompressionBombError):
            mime = None
        if mime is None:
            raise QueryError(f"photo {item_id} of index {slot} can no longer be read", 404)
        return item.path, mime

    def thumbnail(self, slot: int, item_id: int, size: int = THUMBNAIL_SIZE) -> bytes:
        """A JPEG of the indexed photo (or of its object's box), at most `size` pixels on its long side."""
        item = self._item(slot, item_id)
        try:
            image = open_image(item.path, mode="RGB")
        except ImageError:
            raise QueryError(f"photo {item_id} of index {slot} can no longer be read", 404) from None
        if item.box:
            image = image.crop(tuple(item.box))
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    def _item(self, slot: int, item_id: int) -> Item:
        if not 0 <= item_id < 2**63:  # ids are SQLite integers
            raise QueryError(f"index {slot} has no photo {item_id}", 404)
        item = self.gallery(slot).item(item_id)
        if item is None:
            raise QueryError(f"index {slot} has no photo {item_id}", 404)
        return item

    def close(self) -> None:
        """Close every index."""
        for gallery in self.galleries:
            gallery.close()
        self.galleries.clear()


def _search(index: GalleryIndex, vectors, k: int) -> list[Hit]:
    scores, ids = index.search(vectors, k)
    items = index.items(ids[0])
    return [Hit(int(i), float(s), item) for s, i, item in zip(scores[0], ids[0], items) if item is not None]


def hit_json(slot: int, hit: Hit) -> dict:
    """A result as the page gets it: URLs carry the index number and item id, never a path."""
    path = display_path(hit.item.path)
    return {"id": hit.id, "score": round(hit.score, 4), "path": path, "name": os.path.basename(path),
            "object": hit.item.object, "box": list(hit.item.box) if hit.item.box else None,
            "thumb": f"/thumb/{slot}/{hit.id}", "photo": f"/photo/{slot}/{hit.id}"}


def upload_too_large(size: int | None, limit: int) -> str:
    """The message for an upload over `limit` bytes."""
    got = f" ({size} bytes)" if size is not None else ""
    return f"the upload is too large{got}: this server accepts at most {limit} bytes (max_upload_bytes)"
