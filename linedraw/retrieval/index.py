"""A gallery index on disk: a Faiss index of embeddings, a SQLite table of what each id is, a JSON manifest.

Layout of an index directory::

    manifest.json   embedder, checkpoint, dimension, index kind and factory string, count, search defaults
    index.faiss     the Faiss index (ids are SQLite row ids)
    lists.ivfdata   IVF-PQ inverted lists when kept on disk (memory-mapped at search time)
    meta.sqlite     table `items`: id, source path, object name and box, image size, file size, mtime, sha256

Every change is made on a copy in a temporary sibling directory and published by renaming, so a crash leaves
either the old index or the new one, never a mix. Index kinds follow the Faiss guidelines
(github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index): exact `flat` for small galleries,
`hnsw` while the vectors fit the memory budget, `ivfpq` (compact codes, optionally on-disk lists) beyond.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import tempfile
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import faiss
import numpy as np

FORMAT_VERSION = 1
KINDS = ("flat", "hnsw", "ivfpq")
#: Galleries up to this size get exact search under `auto`: brute force is milliseconds there.
FLAT_MAX_COUNT = 50_000
HNSW_M = 32
#: Shard `s` numbers its items from `s << SHARD_ID_BITS`, so shards merge without renumbering.
SHARD_ID_BITS = 40

MANIFEST, FAISS_FILE, LISTS_FILE, DB_FILE = "manifest.json", "index.faiss", "lists.ivfdata", "meta.sqlite"


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


def parse_size(text: str) -> int:
    """'512M', '16G', '1.5GB', '2e9' -> bytes (powers of 1024 for K/M/G/T)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)i?B?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read a memory size from {text!r} (examples: 512M, 16G)")
    scale = 1024 ** " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * scale)


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
    """Number of IVF cells: ~4*sqrt(N) below 1e6 (a power of two), then 65536 / 262144 / 1048576 as the
    guidelines say, never more than N/39 (faiss wants 39 training points per centroid)."""
    if count < 1_000_000:
        nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(count))))
    elif count < 10_000_000:
        nlist = 65536
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
        raise ValueError(f"unknown index kind {kind!r}; choose auto, {', '.join(KINDS)}")
    nlist = _ivf_lists(count)
    m = _pq_bytes(dim)
    # 8-bit codes want >= 39 * 256 training points; small galleries get fewer centroids per sub-quantizer.
    nbits = int(min(8, max(1, math.floor(math.log2(max(2, count / 39))))))
    quantizer = "_HNSW32" if nlist >= 65536 else ""
    if on_disk is None:
        on_disk = count * bytes_per_vector("ivfpq", dim, m) > memory
    nprobe = min(nlist, max(8, min(128, nlist // 32)))
    # "np": no polysemous training (it only serves Hamming pre-filtering, which we do not use, and is slow).
    return IndexPlan("ivfpq", f"IVF{nlist}{quantizer},PQ{m}x{nbits}np", nprobe=nprobe, on_disk=on_disk)


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


def _row_to_item(row: Sequence) -> Item:
    id_, path, obj, x0, y0, x1, y1, width, height, size, mtime, sha = row
    box = None if x0 is None else (x0, y0, x1, y1)
    return Item(path, size, mtime, sha, width, height, obj, box, id_)


class GalleryIndex:
    """An open index directory. Read-only from `open`; `edit`/`create` give a writable copy that `commit`
    publishes atomically."""

    def __init__(self, directory: Path, manifest: dict, index: faiss.Index, db: sqlite3.Connection,
                 target: Path | None = None) -> None:
        self.directory, self.manifest, self.index, self.db, self._target = directory, manifest, index, db, target

    # -- opening
    @classmethod
    def open(cls, directory: str | os.PathLike) -> "GalleryIndex":
        """Open a published index for searching."""
        directory = Path(directory)
        recover(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{directory}: not a linedraw index (no {MANIFEST})")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{directory}: index format {manifest.get('format')} is not {FORMAT_VERSION}")
        with stdout_to_stderr():
            index = faiss.read_index(str(directory / FAISS_FILE), faiss.IO_FLAG_ONDISK_SAME_DIR)
        configure_search(index, manifest.get("nprobe", 0), manifest.get("ef_search", 0))
        db = sqlite3.connect(directory / DB_FILE)
        return cls(directory, manifest, index, db)

    @classmethod
    def create(cls, directory: str | os.PathLike, manifest: dict, index: faiss.Index) -> "GalleryIndex":
        """A new, empty index (`index` already trained) written in a temporary sibling of `directory`."""
        target = Path(directory)
        work = _temp_sibling(target, "tmp")
        db = sqlite3.connect(work / DB_FILE)
        db.executescript(_SCHEMA)
        manifest = {"format": FORMAT_VERSION, "count": 0, **manifest}
        manifest["training_fingerprint"] = training_fingerprint(index)
        return cls(work, manifest, index, db, target)

    @classmethod
    def edit(cls, directory: str | os.PathLike) -> "GalleryIndex":
        """A writable copy of the published index `directory`; `commit()` replaces the original."""
        target = Path(directory)
        recover(target)
        if not (target / MANIFEST).is_file():
            raise FileNotFoundError(f"{target}: not a linedraw index (no {MANIFEST})")
        work = _temp_sibling(target, "tmp")
        for name in os.listdir(target):
            shutil.copy2(target / name, work / name)
        opened = cls.open(work)
        opened._target = target
        return opened

    # -- reading
    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` (scores, ids) per query row; ids of -1 mark missing results."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        k = max(1, min(k, self.count))
        return self.index.search(vectors, k)

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
        """Write everything and atomically replace the published index with this copy."""
        self._writable()
        self.manifest["count"] = self.count
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.db.commit()
        self.db.close()
        with stdout_to_stderr():
            if self.manifest.get("on_disk") and not _has_disk_lists(self.index):
                self.index = _move_lists_to_disk(self.index, self.directory / LISTS_FILE)
            faiss.write_index(self.index, str(self.directory / FAISS_FILE))
        _write_json(self.directory / MANIFEST, self.manifest)
        _fsync_dir(self.directory)
        publish(self.directory, self._target)
        self.directory, self._target = self._target, None
        self.db = sqlite3.connect(self.directory / DB_FILE)

    def discard(self) -> None:
        """Drop an uncommitted copy."""
        if self._target is not None:
            self.db.close()
            shutil.rmtree(self.directory, ignore_errors=True)
            self._target = None

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


# ----------------------------------------------------------------------------------------------- atomic files


def _write_json(path: Path, data: dict) -> None:
    """Atomic JSON write: temp file in the same directory, fsync, os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    for name in os.listdir(directory):
        with open(directory / name, "rb") as handle:
            os.fsync(handle.fileno())


def _temp_sibling(target: Path, tag: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{tag}-"))


def publish(work: Path, target: Path) -> None:
    """Replace directory `target` by `work`: target -> .old, work -> target, drop .old. A crash between the
    two renames is undone by `recover` (the previous index comes back)."""
    old = None
    if target.exists():
        old = _temp_sibling(target, "old")
        os.rmdir(old)
        os.rename(target, old)
    os.rename(work, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover(target: Path) -> None:
    """After a crash mid-publish `target` may be missing while its previous version sits in `.NAME.old-*`:
    put it back. (Unpublished `.NAME.tmp-*` copies of a crashed writer are never read; delete them at will.)"""
    if target.exists():
        for old in glob.glob(str(target.parent / f".{target.name}.old-*")):
            shutil.rmtree(old, ignore_errors=True)
        return
    olds = sorted(glob.glob(str(target.parent / f".{target.name}.old-*")), key=os.path.getmtime)
    if olds:
        os.rename(olds[-1], target)


# ----------------------------------------------------------------------------------------------- merge


def merge_indexes(output: str | os.PathLike, shards: Sequence[str | os.PathLike]) -> GalleryIndex:
    """Merge shard indexes built with the same embedder, checkpoint and (for IVF-PQ) trained quantizer
    (`index build --like`) into `output`. Item ids must be distinct (shards number from `shard << 40`).
    IVF-PQ lists are merged into one on-disk file without loading the codes into memory."""
    opened = [GalleryIndex.open(s) for s in shards]
    if not opened:
        raise ValueError("no shard indexes to merge")
    first = opened[0].manifest
    for shard in opened[1:]:
        for key in ("embedder", "checkpoint", "dim", "kind", "objects", "training_fingerprint"):
            if shard.manifest.get(key) != first.get(key):
                raise ValueError(f"{shard.directory}: {key} {shard.manifest.get(key)!r} differs from "
                                 f"{opened[0].directory}'s {first.get(key)!r}; shards must be built alike "
                                 "(for IVF-PQ: `index build --like TRAINED`)")
    manifest = {k: v for k, v in first.items() if k not in ("count", "next_id", "shard", "updated", "format")}
    merged = GalleryIndex.create(output, manifest, empty_clone(opened[0].index))
    try:
        for shard in opened:
            merged.db.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                                  shard.db.execute("SELECT * FROM items"))
        if first["kind"] == "ivfpq":
            merged.index = merge_ivf_lists(merged.index, [faiss.extract_index_ivf(s.index).invlists
                                                          for s in opened], merged.directory / LISTS_FILE)
            merged.manifest["on_disk"] = True
        else:
            for shard in opened:
                ids = faiss.vector_to_array(shard.index.id_map)
                merged.index.add_with_ids(shard.index.index.reconstruct_n(0, shard.count), ids)
        merged.manifest["next_id"] = max(int(s.manifest.get("next_id", 0)) for s in opened)
        merged.commit()
    except sqlite3.IntegrityError as exc:
        merged.discard()
        raise ValueError(f"shards share item ids ({exc}); build each with a distinct --shard") from None
    except BaseException:
        merged.discard()
        raise
    finally:
        for shard in opened:
            shard.close()
    return merged


def manifest_summary(manifest: dict) -> dict:
    """The manifest fields worth printing in `index info`."""
    keys = ("kind", "factory", "count", "dim", "embedder", "checkpoint", "objects", "on_disk", "nprobe",
            "ef_search", "created", "updated", "shard")
    return {k: manifest.get(k) for k in keys if manifest.get(k) is not None}


__all__ = [
    "Item", "IndexPlan", "GalleryIndex", "KINDS", "parse_size", "choose_kind", "plan_index",
    "create_faiss_index", "configure_search", "merge_indexes", "publish", "recover",
]
