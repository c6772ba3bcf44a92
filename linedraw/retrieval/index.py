"""A gallery index on disk: a Faiss index of embeddings, a SQLite table of what each id is, a JSON manifest.

Layout of an index directory::

    manifest.json   embedder, checkpoint, dimension, index kind and factory string, count, search defaults
    index.faiss     the Faiss index (ids are SQLite row ids)
    lists.ivfdata   IVF-PQ inverted lists when kept on disk (memory-mapped at search time)
    vectors.f16     IVF-PQ only: every vector in float16, rows in the id order of vector_ids.i64 (int64); both
                    memory-mapped, so only the rows of a query's candidates are read, to re-score them exactly
    meta.sqlite     table `items`: id, source path, object name and box, image size, file size, mtime, sha256

Every change is made on a copy in a temporary sibling directory and published by renaming, so a crash leaves
either the old index or the new one, never a mix. One writer at a time: writers hold an flock on `.NAME.lock`
beside the index (released by the kernel if the process dies); readers take no lock. Index kinds follow the Faiss guidelines
(github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index): exact `flat` for small galleries,
`hnsw` while the vectors fit the memory budget, `ivfpq` (compact codes, optionally on-disk lists, candidates
re-scored exactly from the float16 vectors on disk) beyond.

Views: an index built with several views (`drawing`: the embedding of the photo's drawing, `photo`: of the raw
photo) stores per item one vector, the views' unit vectors side by side. A query q (one view wide) becomes
[w q, (1 - w) q], so the inner product is the fused score w cos(q, drawing) + (1 - w) cos(q, photo), exact
for every index kind, with the weight w chosen at search time (w = 1: drawings only, w = 0: photos only).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import faiss
import numpy as np

from linedraw.errors import BusyError, InvalidFileError, LinedrawError, MissingFileError, UsageError
from linedraw.images import _umask, display_path, write_text_atomic

FORMAT_VERSION = 1
KINDS = ("flat", "hnsw", "ivfpq")
#: Galleries up to this size get exact search under `auto`: brute force is milliseconds there.
FLAT_MAX_COUNT = 50_000
HNSW_M = 32
#: Shard `s` numbers its items from `s << SHARD_ID_BITS`, so shards merge without renumbering.
SHARD_ID_BITS = 40

MANIFEST, FAISS_FILE, LISTS_FILE, DB_FILE = "manifest.json", "index.faiss", "lists.ivfdata", "meta.sqlite"
VECTORS_FILE, VECTOR_IDS_FILE = "vectors.f16", "vector_ids.i64"
_ADDED_VECTORS, _ADDED_IDS = "added.f16", "added.i64"  # rows added to a work copy, merged into the store at commit
VIEWS = ("drawing", "photo")
#: IVF-PQ re-scores this many candidates per wanted result with the float16 vectors (`refine` in the manifest):
#: at 1e6 clustered vectors the true top 10 lie within the codes' top ~1000.
REFINE_FACTOR = 100


@dataclass(frozen=True)
class Item:
    """One indexed vector: a photo, or one object of a photo (`object` names it, `box` is x0, y0, x1, y1)."""

    path: str
    size: int
    mtime: float
    sha256: str
    width: int
    height: int
    object: str | None = None
    box: tuple[int, int, int, int] | None = None
    id: int = -1


# ----------------------------------------------------------------------------------------------- choosing


def parse_size(text: str, name: str = "memory") -> int:
    """'512M', '16G', '1.5GB', '2e9' -> bytes (powers of 1024 for K/M/G/T); a UsageError naming `name` for
    anything else (malformed or non-finite numbers included)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)i?B?\s*", text, flags=re.IGNORECASE)
    try:
        value = float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " ") if match else math.nan
    except (ValueError, OverflowError):
        value = math.nan
    if not math.isfinite(value):
        raise UsageError(f"{name}: cannot read a size in bytes from {text!r} (examples: 512M, 16G)")
    return int(value)


def bytes_per_vector(kind: str, dim: int, pq_bytes: int = 0) -> int:
    """Approximate resident bytes per vector: float32 vector + id for flat, plus 2*M graph links for HNSW
    (level 0), PQ code + id for IVF-PQ."""
    if kind == "flat":
        return 4 * dim + 8
    if kind == "hnsw":
        return 4 * dim + 8 + 2 * HNSW_M * 4
    return pq_bytes + 8


def choose_kind(count: int, dim: int, memory: int) -> str:
    """`auto`: flat up to FLAT_MAX_COUNT, HNSW while its vectors and graph fit `memory`, else IVF-PQ."""
    if count <= FLAT_MAX_COUNT and count * bytes_per_vector("flat", dim) <= memory:
        return "flat"
    if count * bytes_per_vector("hnsw", dim) <= memory:
        return "hnsw"
    return "ivfpq"


def _ivf_lists(count: int) -> int:
    """Number of IVF cells: ~4*sqrt(N) below 1e7 (a power of two), then 262144 / 1048576 as the guidelines
    say, never more than N/39 (faiss wants 39 training points per centroid). The guidelines' 65536 cells for
    1e6-1e7 need a k-means over millions of points, hours on a CPU; with the exact re-scoring of the
    candidates, 4*sqrt(N) cells keep recall and latency in target at 1e6."""
    if count < 10_000_000:
        nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(count))))
    elif count < 100_000_000:
        nlist = 262144
    else:
        nlist = 1048576
    return int(max(1, min(nlist, count // 39)))


def _pq_bytes(dim: int) -> int:
    """PQ code length: dim/8 sub-quantizers (8 bytes per 64 dimensions), at most 64, dividing `dim`."""
    for m in (64, 48, 32, 24, 16, 12, 8, 4, 2, 1):
        if m <= max(1, dim // 8) and dim % m == 0:
            return m
    return 1


@dataclass(frozen=True)
class IndexPlan:
    """How the Faiss index is built and searched; stored in the manifest."""

    kind: str
    factory: str
    nprobe: int = 0
    ef_search: int = 0
    on_disk: bool = False
    refine: int = 0  # candidates per result re-scored from the float16 vectors on disk (0: none kept)


def plan_index(kind: str, count: int, dim: int, memory: int, on_disk: bool | None = None) -> IndexPlan:
    """Pick the Faiss factory string and search defaults for `count` vectors of `dim` under `memory` bytes.

    `kind` is 'auto' or one of KINDS; `on_disk=None` keeps IVF-PQ lists on disk only when the codes exceed
    `memory`. IVF-PQ sizes come from `count` (the training sample size when building shards).
    """
    if kind == "auto":
        kind = choose_kind(count, dim, memory)
    if kind == "flat":
        return IndexPlan("flat", "IDMap2,Flat")
    if kind == "hnsw":
        return IndexPlan("hnsw", f"IDMap2,HNSW{HNSW_M}", ef_search=64)
    if kind != "ivfpq":
        raise UsageError(f"kind: unknown index kind {kind!r}; choose auto, {', '.join(KINDS)}")
    nlist = _ivf_lists(count)
    m = _pq_bytes(dim)
    # 8-bit codes want >= 39 * 256 training points; small galleries get fewer centroids per sub-quantizer.
    nbits = int(min(8, max(1, math.floor(math.log2(max(2, count / 39))))))
    quantizer = "_HNSW32" if nlist >= 65536 else ""
    if on_disk is None:
        on_disk = count * bytes_per_vector("ivfpq", dim, m) > memory
    # Few cells suffice where clusters are dense: the exact re-scoring of a wide candidate pool sets the recall
    # there; 32 cells at least for sparse ones, whose neighbours spread over more cells.
    nprobe = min(nlist, max(32, min(128, nlist // 128)))
    # "np": no polysemous training (it only serves Hamming pre-filtering, which we do not use, and is slow).
    return IndexPlan("ivfpq", f"IVF{nlist}{quantizer},PQ{m}x{nbits}np", nprobe=nprobe, on_disk=on_disk,
                     refine=REFINE_FACTOR)


def create_faiss_index(plan: IndexPlan, dim: int) -> faiss.Index:
    """An empty (untrained for IVF-PQ) inner-product index for L2-normalised vectors (so scores are cosines)."""
    return faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)


def configure_search(index: faiss.Index, nprobe: int = 0, ef_search: int = 0) -> None:
    """Set IVF `nprobe` / HNSW `efSearch` (0 leaves a parameter alone)."""
    if nprobe:
        with contextlib.suppress(RuntimeError):
            faiss.extract_index_ivf(index).nprobe = nprobe
    if ef_search:
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = ef_search


def training_fingerprint(index: faiss.Index) -> str:
    """sha256 of an IVF index's trained parameters ("" for flat/HNSW), so a merge can check that shards share
    one coarse quantizer and PQ codebook."""
    if not _is_ivf(index):
        return ""
    return hashlib.sha256(faiss.serialize_index(empty_clone(index)).tobytes()).hexdigest()


def _is_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


def empty_clone(index: faiss.Index) -> faiss.Index:
    """A copy of `index` with no vectors but the same training (IVF lists in memory; `index` is untouched)."""
    if not _is_ivf(index):
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
        if isinstance(inner, faiss.IndexHNSW):
            return faiss.index_factory(index.d, f"IDMap2,HNSW{inner.hnsw.nb_neighbors(1)}", index.metric_type)
        return faiss.index_factory(index.d, "IDMap2,Flat", index.metric_type)
    ivf = faiss.extract_index_ivf(index)
    saved_lists, saved_own, saved_total = ivf.invlists, ivf.own_invlists, ivf.ntotal
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.own_invlists = False  # so replace_invlists does not free the real lists
    ivf.replace_invlists(empty, False)
    ivf.ntotal = index.ntotal = 0
    try:
        return faiss.clone_index(index)
    finally:
        ivf.replace_invlists(saved_lists, saved_own)
        ivf.ntotal = index.ntotal = saved_total


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send C-level stdout to stderr for the duration: faiss's on-disk lists `printf` progress notes, which
    would otherwise corrupt machine-readable output such as `search --json`."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        _libc_fflush()
        os.dup2(saved, 1)
        os.close(saved)


def _libc_fflush() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C runtime handle (e.g. Windows); nothing buffered to lose there
        pass


# ----------------------------------------------------------------------------------------------- storage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, object TEXT, x0 INTEGER, y0 INTEGER, x1 INTEGER, y1 INTEGER,
    width INTEGER, height INTEGER, size INTEGER, mtime REAL, sha256 TEXT);
CREATE INDEX IF NOT EXISTS items_path ON items(path);
"""

#: What an index folder may hold; `index build -o` replaces a folder only if it holds nothing else.
INDEX_FILES = frozenset({MANIFEST, FAISS_FILE, LISTS_FILE, DB_FILE, DB_FILE + "-journal", VECTORS_FILE,
                         VECTOR_IDS_FILE})
#: How long `GalleryIndex.open` retries while a writer swaps the folder (only the two-rename fallback of
#: `publish`, where the kernel cannot exchange folders atomically, leaves a moment without one).
OPEN_RETRY_SECONDS = 10.0


def _row_to_item(row: Sequence) -> Item:
    id_, path, obj, x0, y0, x1, y1, width, height, size, mtime, sha = row
    box = None if x0 is None else (x0, y0, x1, y1)
    return Item(path, size, mtime, sha, width, height, obj, box, id_)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _faiss_reason(exc: BaseException) -> str:
    """Faiss's exception text without its C++ function signature and source location."""
    return re.sub(r"^Error in .* at \S+:\d+: (Error: )?", "", str(exc).strip())


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of the index folder `directory`; a missing folder or manifest, or one that is not a
    linedraw index manifest, raises a LinedrawError naming it."""
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not directory.exists():
            raise MissingFileError(f"{display_path(directory)}: no such index folder") from None
        if not directory.is_dir():
            raise InvalidFileError(f"{display_path(directory)}: not a folder, so not a linedraw index") from None
        raise MissingFileError(f"{display_path(directory)}: not a linedraw index (no {MANIFEST})") from None
    except OSError as exc:
        raise InvalidFileError(f"{display_path(path)}: cannot read it ({exc.strerror or exc})") from None
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise InvalidFileError(f"{display_path(path)}: not valid JSON ({reason}); the file is truncated or "
                               "corrupt, rebuild the index") from None
    if not isinstance(manifest, dict) or "format" not in manifest or "kind" not in manifest:
        raise InvalidFileError(f"{display_path(path)}: not a linedraw index manifest")
    if manifest["format"] != FORMAT_VERSION:
        raise InvalidFileError(f"{display_path(path)}: index format {manifest['format']} is not {FORMAT_VERSION}; "
                               "rebuild the index with this version of linedraw")
    return manifest


def views_of(manifest: dict) -> list[str]:
    """The views an index stores side by side per item; an index built before views were recorded holds one:
    the drawing when it was built with a checkpoint, else the raw photo."""
    views = manifest.get("views")
    if views:
        return list(views)
    return ["drawing"] if manifest.get("checkpoint") else ["photo"]


def view_weights(views: Sequence[str], fuse_weight: float) -> list[float]:
    """Per-view weights for a fused query: `fuse_weight` for the drawing, 1 - `fuse_weight` for the photo (a
    one-view index: 1)."""
    if isinstance(fuse_weight, bool) or not isinstance(fuse_weight, (int, float)) or not 0 <= fuse_weight <= 1:
        raise UsageError(f"fuse_weight must be a number between 0 and 1, got {fuse_weight!r}")
    if len(views) == 1:
        return [1.0]
    return [float(fuse_weight) if view == "drawing" else 1.0 - float(fuse_weight) for view in views]


class VectorStore:
    """Full-precision copies of an IVF-PQ index's vectors on disk: float16 rows (`vectors.f16`) in the order
    of their sorted ids (`vector_ids.i64`), both memory-mapped, so searching reads only the candidates' rows
    and the codes are all that stays in memory."""

    def __init__(self, directory: Path, dim: int) -> None:
        self.directory, self.dim = Path(directory), dim
        ids_path, vectors_path = self.directory / VECTOR_IDS_FILE, self.directory / VECTORS_FILE
        count = ids_path.stat().st_size // 8 if ids_path.exists() else 0
        if vectors_path.exists() and vectors_path.stat().st_size != count * dim * 2:
            raise InvalidFileError(f"{display_path(vectors_path)}: {vectors_path.stat().st_size} bytes, not "
                                   f"{count} float16 rows of {dim}; rebuild the index")
        self.ids = np.memmap(ids_path, np.int64, "r") if count else np.zeros(0, np.int64)
        self.vectors = np.memmap(vectors_path, np.float16, "r", shape=(count, dim)) if count else \
            np.zeros((0, dim), np.float16)
        self._dense = bool(count) and int(self.ids[0]) == 0 and int(self.ids[-1]) == count - 1  # row = id

    def _rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found): the row of each id and whether the store has it."""
        if not len(self.ids):
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        if self._dense:
            found = (ids >= 0) & (ids < len(self.ids))
            return np.where(found, ids, 0), found
        rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return rows, self.ids[rows] == ids

    def rescore(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per query row, the top `k` of its `candidates` ids by exact inner product with their float16
        vectors: (scores, ids), padded with -inf / -1. Faiss's fp16 scalar quantizer scores the raw rows
        (SIMD half-float decoding; numpy's float16 conversion is many times slower)."""
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        codes = np.asarray(self.vectors).view(np.uint8)
        for row, (query, wanted) in enumerate(zip(queries, np.asarray(candidates, np.int64))):
            rows, found = self._rows(wanted)
            wanted, rows = wanted[found], rows[found]
            if not len(rows):
                continue
            exact = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
            faiss.copy_array_to_vector(np.take(codes, rows, axis=0).ravel(), exact.codes)
            exact.ntotal = len(rows)
            top, local = exact.search(np.ascontiguousarray(query[None], np.float32), min(k, len(rows)))
            keep = local[0] >= 0
            scores[row, :keep.sum()], ids[row, :keep.sum()] = top[0][keep], wanted[local[0][keep]]
        return scores, ids

    def get(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dim) float32 rows for `ids` (zero rows for -1 or unknown ids)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        out = np.zeros((len(ids), self.dim), np.float32)
        if not len(self.ids):
            return out
        rows, found = self._rows(ids)
        order = np.argsort(rows[found])  # ascending rows read the file front to back
        picked = rows[found][order]
        values = self.vectors[picked].astype(np.float32)
        target = np.flatnonzero(found)[order]
        out[target] = values
        return out

    @staticmethod
    def write(directory: Path, parts: Sequence[tuple], dim: int) -> None:
        """Write the store of `directory` from `parts`, each (ids, vectors[, rows]): the `rows` of `vectors`
        (all when absent, e.g. a memory-mapped store) with their `ids`; rows are streamed in blocks, sorted by
        id. The caller's folder is a private copy, published atomically as a whole."""
        parts = [(np.asarray(p[0], np.int64), p[1], p[2] if len(p) > 2 else None) for p in parts if len(p[0])]
        ids = np.concatenate([i for i, _, _ in parts]) if parts else np.zeros(0, np.int64)
        order = None if len(ids) < 2 or bool(np.all(np.diff(ids) > 0)) else np.argsort(ids, kind="stable")
        block = 65536
        with open(directory / (VECTORS_FILE + ".new"), "wb") as handle:
            if order is None:
                for _, vectors, rows in parts:
                    count = len(vectors) if rows is None else len(rows)
                    for start in range(0, count, block):
                        chunk = vectors[start:start + block] if rows is None else vectors[rows[start:start + block]]
                        handle.write(np.ascontiguousarray(chunk, np.float16).tobytes())
            else:  # merged shards: put the rows in id order
                offsets = np.cumsum([0] + [len(i) for i, _, _ in parts])
                for start in range(0, len(order), block):
                    wanted = order[start:start + block]
                    out = np.empty((len(wanted), dim), np.float16)
                    part_of = np.searchsorted(offsets, wanted, side="right") - 1
                    for p in np.unique(part_of):
                        mask = part_of == p
                        local = wanted[mask] - offsets[p]
                        rows = parts[p][2]
                        out[mask] = parts[p][1][local if rows is None else rows[local]]
                    handle.write(out.tobytes())
                ids = ids[order]
        (directory / (VECTOR_IDS_FILE + ".new")).write_bytes(ids.tobytes())
        os.replace(directory / (VECTORS_FILE + ".new"), directory / VECTORS_FILE)
        os.replace(directory / (VECTOR_IDS_FILE + ".new"), directory / VECTOR_IDS_FILE)


def _checked_file(directory: Path, manifest: dict, name: str, shown: Path) -> Path:
    """`directory/name`, after checking that it exists and has the size the manifest recorded."""
    path = directory / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MissingFileError(f"{display_path(shown / name)}: missing from the index; rebuild it") from None
    sizes = manifest.get("sizes")
    expected = sizes.get(name) if isinstance(sizes, dict) else None
    if expected is not None and size != expected:
        raise InvalidFileError(f"{display_path(shown / name)}: {size} bytes where the manifest records {expected}: "
                               "the file is truncated or was replaced; rebuild the index")
    return path


def _connect(path: Path, writable: bool) -> sqlite3.Connection:
    if writable:
        return sqlite3.connect(path)
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _load(directory: Path, writable: bool, shown: Path | None = None):
    """Read and check an index folder: (manifest, Faiss index, SQLite connection). Every problem with a file
    raises a LinedrawError naming it as `shown/NAME` (the published path when `directory` is a work copy)."""
    shown = shown or directory
    manifest = read_manifest(directory)
    faiss_path = _checked_file(directory, manifest, FAISS_FILE, shown)
    if manifest.get("on_disk"):
        _checked_file(directory, manifest, LISTS_FILE, shown)
    if manifest.get("refine"):
        for name in (VECTORS_FILE, VECTOR_IDS_FILE):
            _checked_file(directory, manifest, name, shown)
    db_path = _checked_file(directory, manifest, DB_FILE, shown)
    try:
        with stdout_to_stderr():
            index = faiss.read_index(str(faiss_path), faiss.IO_FLAG_ONDISK_SAME_DIR)
    except RuntimeError as exc:
        raise InvalidFileError(f"{display_path(shown / FAISS_FILE)}: Faiss cannot read it ({_faiss_reason(exc)}); "
                               "the file is truncated or corrupt, rebuild the index") from None
    views = len(views_of(manifest))
    count, dim = manifest.get("count", index.ntotal), manifest.get("dim", index.d // views) * views
    if (index.ntotal, index.d) != (count, dim):
        raise InvalidFileError(f"{display_path(shown / FAISS_FILE)}: {index.ntotal} vectors of dimension {index.d}, "
                               f"the manifest says {count} of {dim}; rebuild the index")
    db = None
    try:
        db = _connect(db_path, writable)
        pages = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
        if pages > db_path.stat().st_size:
            raise sqlite3.DatabaseError("the file is shorter than its header says")
        db.execute("SELECT max(id) FROM items").fetchone()
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        raise InvalidFileError(f"{display_path(shown / DB_FILE)}: SQLite cannot read it ({exc}); the file is "
                               "truncated or corrupt, rebuild the index") from None
    configure_search(index, manifest.get("nprobe", 0), manifest.get("ef_search", 0))
    return manifest, index, db


class GalleryIndex:
    """An open index directory. Read-only from `open`; `edit`/`create` give a writable copy that `commit`
    publishes atomically. Writers hold the index's lock (`writer_lock`) from `edit`/`create` to
    `commit`/`discard`; readers take none."""

    def __init__(self, directory: Path, manifest: dict, index: faiss.Index, db: sqlite3.Connection,
                 target: Path | None = None, lock: contextlib.ExitStack | None = None) -> None:
        self.directory, self.manifest, self.index, self.db, self._target = directory, manifest, index, db, target
        self._lock = lock
        self._store: VectorStore | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (ids, vectors) of merged shards' stores
        self._removed: set[int] = set()

    # -- opening
    @classmethod
    def open(cls, directory: str | os.PathLike) -> "GalleryIndex":
        """Open a published index for searching; a missing, truncated or corrupt file raises a LinedrawError
        naming it. Needs no lock: a folder swapped in by a writer during the read is read again."""
        directory = Path(directory)
        deadline = time.monotonic() + OPEN_RETRY_SECONDS
        while True:
            before = _read_bytes(directory / MANIFEST)
            try:
                return cls._open_once(directory, before)
            except _Swapped:
                if time.monotonic() > deadline:
                    raise BusyError(f"{display_path(directory)}: the index kept changing while it was read; "
                                    "try again") from None
            except LinedrawError:
                if before is not None or time.monotonic() > deadline or not _publish_interrupted(directory):
                    raise
                with contextlib.suppress(BusyError):  # a writer crashed mid-publish: put its old index back
                    recover(directory)
            time.sleep(0.02)

    @classmethod
    def _open_once(cls, directory: Path, before: bytes | None) -> "GalleryIndex":
        try:
            loaded = _load(directory, writable=False)
        except LinedrawError:
            if before is not None and _read_bytes(directory / MANIFEST) != before:
                raise _Swapped() from None
            raise
        opened = cls(directory, *loaded)
        try:  # the float16 vectors now, so a write after this cannot pair them with these codes
            opened.store
        except (LinedrawError, OSError) as exc:
            loaded[2].close()
            if _read_bytes(directory / MANIFEST) != before:
                raise _Swapped() from None
            if isinstance(exc, LinedrawError):
                raise
            raise InvalidFileError(f"{display_path(directory)}: cannot read the index's float16 vectors ({exc}); "
                                   "rebuild the index") from None
        if _read_bytes(directory / MANIFEST) != before:
            loaded[2].close()
            raise _Swapped()
        return opened

    @classmethod
    def create(cls, directory: str | os.PathLike, manifest: dict, index: faiss.Index,
               wait: float = 0.0) -> "GalleryIndex":
        """A new, empty index (`index` already trained) written in a temporary sibling of `directory`. Refuses
        a `directory` that exists and is not an index (see `check_output`); waits up to `wait` seconds for
        another writer of `directory`."""
        target = _real_target(directory)
        check_output(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = contextlib.ExitStack()
        try:
            lock.enter_context(writer_lock(target, wait))
            recover(target)
            check_output(target)
            work = _temp_sibling(target, "tmp")
        except BaseException:
            lock.close()
            raise
        db = sqlite3.connect(work / DB_FILE)
        db.executescript(_SCHEMA)
        manifest = {"format": FORMAT_VERSION, "count": 0, **manifest}
        manifest["training_fingerprint"] = training_fingerprint(index)
        return cls(work, manifest, index, db, target, lock)

    @classmethod
    def edit(cls, directory: str | os.PathLike, wait: float = 0.0) -> "GalleryIndex":
        """A writable copy of the published index `directory`; `commit()` replaces the original. Waits up to
        `wait` seconds for another writer to finish (BusyError after that)."""
        target = _real_target(directory)
        lock = contextlib.ExitStack()
        work = None
        try:
            lock.enter_context(writer_lock(target, wait, existing=True))
            recover(target)
            read_manifest(target)
            work = _temp_sibling(target, "tmp")
            for name in os.listdir(target):
                shutil.copy2(target / name, work / name)
            manifest, index, db = _load(work, writable=True, shown=target)
        except BaseException:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            lock.close()
            raise
        return cls(work, manifest, index, db, target, lock)

    # -- reading
    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def views(self) -> list[str]:
        """What each item's vector holds, side by side: "drawing" and/or "photo" embeddings."""
        return views_of(self.manifest)

    @property
    def dim(self) -> int:
        """The embedder's dimension, that of one view and of a query."""
        return int(self.manifest.get("dim", self.index.d // len(self.views)))

    @property
    def fuse_weight(self) -> float:
        """The default weight of the drawing view in the fused score (1.0 for an index with one view)."""
        return float(self.manifest.get("fuse_weight", 1.0)) if len(self.views) > 1 else 1.0

    @property
    def store(self) -> VectorStore | None:
        """The float16 vectors on disk (IVF-PQ indexes built with re-scoring), else None."""
        if self._store is None and self.manifest.get("refine"):
            self._store = VectorStore(self.directory, int(self.index.d))
        return self._store

    def search(self, vectors: np.ndarray, k: int, *, fuse_weight: float | None = None,
               under: str | os.PathLike | None = None, dedupe: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` (scores, ids) per query row (one view wide); ids of -1 mark missing results.

        `fuse_weight`: the drawing view's weight in the fused score of a two-view index (default: the
        manifest's). `under`: only photos under this folder. `dedupe`: a cosine in (0, 1]: a result whose photo
        embedding is at least this close to a better-ranked one's is dropped (0: keep all). IVF-PQ candidates
        are re-scored exactly with the float16 vectors on disk when the index keeps them."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UsageError(f"k must be a positive whole number of results, got {k!r}")
        if isinstance(dedupe, bool) or not isinstance(dedupe, (int, float)) or not 0 <= dedupe <= 1:
            raise UsageError(f"dedupe must be a cosine between 0 and 1 (0: off), got {dedupe!r}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise UsageError(f"queries of shape {vectors.shape}: this index wants rows of {self.dim} values "
                             f"(its embedder's dimension)")
        weights = view_weights(self.views, self.fuse_weight if fuse_weight is None else fuse_weight)
        query = np.ascontiguousarray(np.hstack([w * vectors for w in weights]), dtype=np.float32)
        k = max(1, min(int(k), self.count))
        params, allowed = self._selector(under)
        wanted = min(self.count, k * 4) if dedupe else k
        wanted = max(1, min(wanted, allowed))
        store = self.store
        fetch = max(1, min(self.count, wanted * int(self.manifest.get("refine", 1)))) if store else wanted
        scores, ids = self.index.search(query, fetch, params=params)
        if store is not None:
            scores, ids = store.rescore(query, ids, wanted)
        if dedupe:
            scores, ids = self._collapse(scores, ids, dedupe)
        scores, ids = scores[:, :k], ids[:, :k]
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            ids = np.hstack([ids, np.full((len(ids), pad), -1, np.int64)])
            scores = np.hstack([scores, np.full((len(ids), pad), -np.inf, np.float32)])
        return scores, ids

    def _selector(self, under: str | os.PathLike | None) -> tuple[object, int]:
        """Faiss search parameters restricting results to the items under the folder `under` (None: every
        item) and how many items that leaves."""
        if under is None:
            return None, self.count
        prefix = like_prefix(os.path.abspath(under))
        wanted = np.fromiter((r[0] for r in self.db.execute("SELECT id FROM items WHERE path LIKE ? ESCAPE '\\'",
                                                            (prefix + "%",))), dtype=np.int64)
        selector = faiss.IDSelectorBatch(len(wanted), faiss.swig_ptr(wanted))
        selector.referenced_ids = wanted  # keep the array alive as long as the selector
        if _is_ivf(self.index):
            params = faiss.SearchParametersIVF(sel=selector, nprobe=faiss.extract_index_ivf(self.index).nprobe)
        else:
            inner = faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap) else self.index
            if hasattr(inner, "hnsw"):
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
            else:
                params = faiss.SearchParameters(sel=selector)
        params.referenced_selector = selector
        return params, len(wanted)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored (full-precision) vectors of `ids`, one row of all views per id (zeros for -1)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if self.store is not None:
            return self.store.get(ids)
        out = np.zeros((len(ids), self.index.d), np.float32)
        known = ids >= 0
        try:
            if known.any():
                out[known] = self.index.reconstruct_batch(ids[known])
        except RuntimeError:
            raise UsageError(f"{display_path(self.directory)}: this IVF-PQ index keeps no full-precision vectors "
                             "(it was built before linedraw stored them); rebuild it to collapse duplicates") from None
        return out

    def view_vectors(self, ids: Sequence[int], view: str) -> np.ndarray:
        """The `view` ("drawing" or "photo") part of the stored vectors of `ids`."""
        column = self.views.index(view)
        return self.vectors(ids)[:, column * self.dim:(column + 1) * self.dim]

    def _collapse(self, scores: np.ndarray, ids: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Drop, row by row, results whose photo embedding has cosine >= `threshold` with a better one's."""
        view = "photo" if "photo" in self.views else self.views[0]
        out_scores = np.full_like(scores, -np.inf)
        out_ids = np.full_like(ids, -1)
        for row in range(len(ids)):
            valid = ids[row] >= 0
            found = self.view_vectors(ids[row][valid], view)
            found /= np.maximum(np.linalg.norm(found, axis=1, keepdims=True), 1e-12)
            kept: list[int] = []
            for j in range(len(found)):
                if not kept or float((found[kept] @ found[j]).max()) < threshold:
                    kept.append(j)
            out_ids[row, :len(kept)] = ids[row][valid][kept]
            out_scores[row, :len(kept)] = scores[row][valid][kept]
        return out_scores, out_ids

    def items(self, ids: Sequence[int]) -> list[Item | None]:
        """The stored items for `ids` (None for -1 or unknown ids), in order."""
        wanted = [int(i) for i in ids if int(i) >= 0]
        found: dict[int, Item] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(f"SELECT * FROM items WHERE id IN ({marks})", chunk):
                found[row[0]] = _row_to_item(row)
        return [found.get(int(i)) for i in ids]

    def all_items(self) -> Iterator[Item]:
        """Every stored item, in id order."""
        for row in self.db.execute("SELECT * FROM items ORDER BY id"):
            yield _row_to_item(row)

    def items_for_path(self, path: str) -> list[Item]:
        return [_row_to_item(r) for r in self.db.execute("SELECT * FROM items WHERE path = ?", (path,))]

    # -- writing (only on copies from `create` / `edit`)
    def _writable(self) -> None:
        if self._target is None:
            raise RuntimeError("this index was opened read-only; use GalleryIndex.edit() to change it")

    def add(self, vectors: np.ndarray, items: Sequence[Item]) -> list[int]:
        """Add one vector per item with fresh ids; returns the ids."""
        self._writable()
        if len(vectors) != len(items):
            raise ValueError(f"{len(vectors)} vectors for {len(items)} items")
        if not len(items):
            return []
        first = int(self.manifest.get("next_id", 0))
        ids = np.arange(first, first + len(items), dtype=np.int64)
        with stdout_to_stderr():
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        if self.manifest.get("refine"):  # appended to files in the work copy, so a big build holds no copy in RAM
            with open(self.directory / _ADDED_VECTORS, "ab") as handle:
                handle.write(np.ascontiguousarray(vectors, dtype=np.float16).tobytes())
            with open(self.directory / _ADDED_IDS, "ab") as handle:
                handle.write(ids.tobytes())
        rows = []
        for id_, item in zip(ids.tolist(), items):
            box = item.box or (None, None, None, None)
            rows.append((id_, item.path, item.object, *box, item.width, item.height, item.size, item.mtime,
                         item.sha256))
        self.db.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        self.manifest["next_id"] = first + len(items)
        return ids.tolist()

    def remove(self, ids: Sequence[int]) -> int:
        """Remove items by id from the vectors and the table; returns how many were removed."""
        self._writable()
        ids = np.asarray(sorted(set(int(i) for i in ids)), dtype=np.int64)
        if not len(ids):
            return 0
        self._removed.update(ids.tolist())
        if self.manifest["kind"] == "hnsw":
            # HNSW graphs cannot drop nodes: rebuild the graph from the stored vectors without them.
            all_ids = faiss.vector_to_array(self.index.id_map)
            keep = ~np.isin(all_ids, ids)
            vectors = self.index.index.reconstruct_n(0, self.index.ntotal)[keep]
            removed = int((~keep).sum())
            self.index = empty_clone(self.index)
            configure_search(self.index, ef_search=self.manifest.get("ef_search", 0))
            self.index.add_with_ids(vectors, all_ids[keep])
        else:
            with stdout_to_stderr():
                removed = int(self.index.remove_ids(ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500].tolist()
            self.db.execute(f"DELETE FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        return removed

    def commit(self) -> None:
        """Write everything, atomically replace the published index with this copy and release the lock."""
        self._writable()
        try:
            self.manifest["count"] = self.count
            self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.manifest["revision"] = secrets.token_hex(8)  # readers compare manifests to notice a swap
            self.db.commit()
            self.db.close()
            with stdout_to_stderr():
                if self.manifest.get("on_disk") and not _has_disk_lists(self.index):
                    self.index = _move_lists_to_disk(self.index, self.directory / LISTS_FILE)
                faiss.write_index(self.index, str(self.directory / FAISS_FILE))
            names = [FAISS_FILE, DB_FILE] + ([LISTS_FILE] if self.manifest.get("on_disk") else [])
            if self.manifest.get("refine"):
                self._write_store()
                names += [VECTORS_FILE, VECTOR_IDS_FILE]
            self.manifest["sizes"] = {name: (self.directory / name).stat().st_size for name in names}
            write_text_atomic(self.directory / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=True))
            _fsync_dir(self.directory)
            publish(self.directory, self._target)
        except BaseException:
            self.discard()
            raise
        self.directory, self._target = self._target, None
        self._store, self._pending, self._removed = None, [], set()
        self._release()
        self.db = _connect(self.directory / DB_FILE, writable=False)

    def _write_store(self) -> None:
        """Rewrite the float16 store of the work copy: its rows less the removed ones, plus the added ones."""
        old = VectorStore(self.directory, int(self.index.d))
        removed = np.fromiter(self._removed, dtype=np.int64)
        parts: list[tuple] = []
        if len(old.ids):
            keep = np.flatnonzero(~np.isin(old.ids, removed)) if len(removed) else None
            parts.append((old.ids if keep is None else old.ids[keep], old.vectors, keep))
        added_ids, added_vectors = self.directory / _ADDED_IDS, self.directory / _ADDED_VECTORS
        pending = list(self._pending)
        if added_ids.exists() and added_ids.stat().st_size:
            ids = np.memmap(added_ids, np.int64, "r")
            pending.append((ids, np.memmap(added_vectors, np.float16, "r", shape=(len(ids), int(self.index.d)))))
        for ids, vectors in pending:
            keep = np.flatnonzero(~np.isin(ids, removed)) if len(removed) else None
            parts.append((ids if keep is None else ids[keep], vectors, keep))
        VectorStore.write(self.directory, parts, int(self.index.d))
        for name in (added_ids, added_vectors):
            name.unlink(missing_ok=True)
        self._store = None

    def discard(self) -> None:
        """Drop an uncommitted copy and release the lock."""
        if self._target is not None:
            self.db.close()
            shutil.rmtree(self.directory, ignore_errors=True)
            self._target = None
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "GalleryIndex":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            self.discard()
        elif self._target is not None:
            self.commit()
        self.close()


class _Swapped(Exception):
    """A writer published a new version of the folder while `open` was reading it."""


def like_prefix(directory: str) -> str:
    """A SQL LIKE prefix (escape character backslash) matching the paths under the absolute `directory`."""
    escaped = directory.rstrip(os.sep).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + os.sep


def _has_disk_lists(index: faiss.Index) -> bool:
    return _is_ivf(index) and isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists),
                                         faiss.OnDiskInvertedLists)


def _move_lists_to_disk(index: faiss.Index, path: Path) -> faiss.Index:
    """Copy in-memory IVF lists into an on-disk (memory-mapped) file at `path`; returns the index."""
    return merge_ivf_lists(empty_clone(index), [faiss.extract_index_ivf(index).invlists], path)


def merge_ivf_lists(empty: faiss.Index, lists: Sequence, path: Path) -> faiss.Index:
    """Fill the trained, empty IVF index `empty` with the concatenated inverted `lists`, stored on disk."""
    ivf = faiss.extract_index_ivf(empty)
    on_disk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(path))
    pointers = faiss.InvertedListsPtrVector()
    for item in lists:
        pointers.push_back(item)
    with stdout_to_stderr():
        total = on_disk.merge_from_multiple(pointers.data(), pointers.size(), False)
    ivf.replace_invlists(on_disk, True)
    on_disk.this.disown()
    ivf.ntotal = empty.ntotal = int(total)
    return empty


# ----------------------------------------------------------------------------------------------- one writer


def _real_target(directory: str | os.PathLike) -> Path:
    """The folder a writer changes: an index reached through a symlink is locked, copied and swapped where it
    really is (the link stays a link, and writers through the link and through the folder exclude each other)."""
    return Path(os.path.realpath(directory))


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


#: Locks this process holds: (lock file, pid, thread) -> depth, so a writer's nested steps share its lock.
_HELD: dict[tuple[str, int, int], int] = {}


@contextlib.contextmanager
def writer_lock(directory: str | os.PathLike, wait: float = 0.0, existing: bool = False) -> Iterator[None]:
    """Hold the exclusive writer lock of the index `directory` (an flock on `.NAME.lock` beside it, which the
    kernel releases when the process dies). Waits up to `wait` seconds for another writer, then raises
    BusyError; nested use in one thread shares the lock. `existing`: the index must exist (MissingFileError,
    and no lock file is created, when it does not)."""
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
        raise UsageError(f"wait must be a number of seconds >= 0, got {wait!r}")
    target = _real_target(directory)
    if existing and not target.exists() and not _publish_interrupted(target):
        read_manifest(target)  # raises the missing-folder error
    path = _lock_path(target)
    key = (os.path.abspath(path), os.getpid(), threading.get_ident())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    fd = _acquire(path, target, wait)
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):  # Windows cannot remove an open file: it is then reused
            os.unlink(path)  # before unlocking: a waiting writer then finds its file gone and opens a new one
        os.close(fd)


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on the open file `fd` without blocking; False if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: a byte-range lock, also released when the process dies
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _acquire(path: Path, target: Path, wait: float) -> int:
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(fd):
            os.close(fd)
            if time.monotonic() >= deadline:
                waited = f"still held after waiting {wait:g} s; " if wait else ""
                raise BusyError(f"{display_path(target)}: another writer holds this index ({display_path(path)}); "
                                f"{waited}try again when it has finished, or give `wait` the seconds to wait "
                                "for it") from None
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            continue
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # the previous holder removed this file as it released it: lock the new one


# ----------------------------------------------------------------------------------------------- publishing


def _fsync_dir(directory: Path) -> None:
    for name in os.listdir(directory):
        with open(directory / name, "rb") as handle:
            os.fsync(handle.fileno())


def _temp_sibling(target: Path, tag: str) -> Path:
    """A new, uniquely named folder beside `target` with the user's usual permissions (mkdtemp's are 0700)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{tag}-"))
    os.chmod(work, 0o777 & ~_umask())
    return work


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a file system or kernel without exchange
        return False
    raise OSError(error, os.strerror(error), os.fspath(second))


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def publish(work: Path, target: Path) -> None:
    """Replace directory `target` by `work`. Where the kernel can, the two are swapped atomically (readers see
    the old folder or the new one, never none) and the old one is removed; elsewhere target -> .old,
    work -> target, drop .old, and a crash between the two renames is undone by `recover`."""
    if target.exists() and _exchange(work, target):
        shutil.rmtree(work, ignore_errors=True)
        return
    old = None
    if target.exists():
        old = _temp_sibling(target, "old")
        os.rmdir(old)
        os.rename(target, old)
    os.rename(work, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _publish_interrupted(target: Path) -> bool:
    return not target.exists() and bool(glob.glob(glob.escape(str(target.parent / f".{target.name}.old-")) + "*"))


def recover(target: Path) -> None:
    """Under the writer lock: after a crash mid-publish `target` may be missing while its previous version sits
    in `.NAME.old-*`: put it back; then drop what crashed writers left (`.NAME.old-*`, `.NAME.tmp-*`)."""
    target = _real_target(target)
    prefix = glob.escape(str(target.parent / f".{target.name}."))
    with writer_lock(target):
        olds = sorted(glob.glob(prefix + "old-*"), key=os.path.getmtime)
        if not target.exists() and olds:
            os.rename(olds.pop(), target)
        for left in olds + glob.glob(prefix + "tmp-*"):
            shutil.rmtree(left, ignore_errors=True)


def check_output(target: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse to write an index where it would destroy something: over an existing folder that is neither
    empty nor an index (only index files and a linedraw manifest), over a file, or inside (or over) one of
    the folders in `inputs`."""
    target = Path(target)
    where = os.path.realpath(target)
    for folder in inputs:
        folder_path = os.path.realpath(folder)
        if os.path.isdir(folder_path) and (where == folder_path or where.startswith(folder_path.rstrip(os.sep)
                                                                                   + os.sep)):
            raise UsageError(f"{display_path(target)}: refusing to write an index inside the input folder "
                             f"{display_path(folder)} (or over it); choose an output outside the photos")
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise UsageError(f"{display_path(target)}: exists and is not a folder; refusing to replace it with an index")
    names = sorted(os.listdir(target))
    if not names:
        return
    reason = f"no {MANIFEST}"
    if MANIFEST in names:
        try:
            read_manifest(target)
            strays = [n for n in names if n not in INDEX_FILES]
            reason = f"it also holds {strays[0]!r}" if strays else ""
        except LinedrawError as exc:
            reason = str(exc).split(": ", 1)[-1]
    if reason:
        raise UsageError(f"{display_path(target)}: exists and is not a linedraw index ({reason}); refusing to "
                         "replace it: choose another output, or remove the folder yourself")


# ----------------------------------------------------------------------------------------------- merge


def merge_indexes(output: str | os.PathLike, shards: Sequence[str | os.PathLike],
                  wait: float = 0.0) -> GalleryIndex:
    """Merge shard indexes built with the same embedder, checkpoint and (for IVF-PQ) trained quantizer
    (`index build --like`) into `output`. Item ids must be distinct (shards number from `shard << 40`).
    IVF-PQ lists are merged into one on-disk file without loading the codes into memory."""
    if not shards:
        raise UsageError("shards: no shard indexes to merge")
    check_output(output, shards)
    opened: list[GalleryIndex] = []
    try:
        for shard in shards:
            opened.append(GalleryIndex.open(shard))
        first = opened[0].manifest
        for shard in opened[1:]:
            for key in ("embedder", "checkpoint", "dim", "kind", "objects", "training_fingerprint", "views",
                        "refine"):
                if shard.manifest.get(key) != first.get(key):
                    raise UsageError(f"{display_path(shard.directory)}: {key} {shard.manifest.get(key)!r} differs "
                                     f"from {display_path(opened[0].directory)}'s {first.get(key)!r}; shards must "
                                     "be built alike (for IVF-PQ: `index build --like TRAINED`)")
        manifest = {k: v for k, v in first.items()
                    if k not in ("count", "next_id", "shard", "updated", "format", "revision", "sizes")}
        merged = GalleryIndex.create(output, manifest, empty_clone(opened[0].index), wait=wait)
        try:
            for shard in opened:
                merged.db.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                                      shard.db.execute("SELECT * FROM items"))
            if first["kind"] == "ivfpq":
                merged.index = merge_ivf_lists(merged.index, [faiss.extract_index_ivf(s.index).invlists
                                                              for s in opened], merged.directory / LISTS_FILE)
                merged.manifest["on_disk"] = True
                if first.get("refine"):
                    merged._pending = [(s.store.ids, s.store.vectors) for s in opened]
            else:
                for shard in opened:
                    ids = faiss.vector_to_array(shard.index.id_map)
                    merged.index.add_with_ids(shard.index.index.reconstruct_n(0, shard.count), ids)
            merged.manifest["next_id"] = max(int(s.manifest.get("next_id", 0)) for s in opened)
            merged.commit()
        except sqlite3.IntegrityError as exc:
            merged.discard()
            raise UsageError(f"shards share item ids ({exc}); build each with a distinct shard number") from None
        except BaseException:
            merged.discard()
            raise
    finally:
        for shard in opened:
            shard.close()
    return merged


def manifest_summary(manifest: dict) -> dict:
    """The manifest fields worth printing in `index info`."""
    keys = ("kind", "factory", "count", "dim", "views", "fuse_weight", "embedder", "checkpoint", "objects",
            "on_disk", "nprobe", "ef_search", "refine", "created", "updated", "shard")
    return {k: manifest.get(k) for k in keys if manifest.get(k) is not None}


__all__ = [
    "Item", "IndexPlan", "GalleryIndex", "KINDS", "parse_size", "choose_kind", "plan_index",
    "create_faiss_index", "configure_search", "merge_indexes", "publish", "recover", "writer_lock",
    "check_output", "read_manifest", "views_of", "view_weights", "VectorStore", "VIEWS",
]
