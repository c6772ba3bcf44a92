"""Photos -> drawings -> embeddings -> index directories: `build`, `add`, `remove`, resumable and atomic.

Embedding is the slow part, so it checkpoints: photos are processed in chunks whose vectors and items are
saved in a work area beside the index (`<INDEX>.work/`); a rerun of the same command skips finished chunks.
Only when every chunk is done is the Faiss index trained/filled and published (see `index.py`). Each command
holds the index's writer lock from start to end, so the work area is never shared by two writers.
"""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import faiss
import numpy as np
from PIL import Image
from tqdm import tqdm

from linedraw.errors import MissingFileError, UsageError
from linedraw.images import ImageError, display_path, list_images, open_image, write_atomic_path
from linedraw.retrieval.embed import Embedder, build_embedder
from linedraw.retrieval.index import (
    SHARD_ID_BITS, VIEWS, GalleryIndex, Item, check_output, create_faiss_index, empty_clone, like_prefix,
    plan_index, writer_lock,
)
from linedraw.retrieval.objects import ObjectSource, crop_object

#: Training sample floor for IVF-PQ (faiss needs ~39-256 points per centroid; more only costs time).
MAX_TRAIN_VECTORS = 500_000


@dataclass
class Encoding:
    """How gallery photos become vectors; recorded in the manifest so queries are embedded the same way."""

    embedder: str
    checkpoint: str | None = None  # None: the raw photos are embedded (the baseline)
    objects: str | None = None  # None, "boxes" or "masks"
    object_source: str | None = None
    min_object_area: float = 0.01
    draw_size: int = 256  # short side photos are drawn at (the embedder sees ~224 px anyway)
    views: list[str] | None = None  # what is embedded per photo (see `parse_views`); None: one view, as before
    fuse_weight: float | None = None  # two views: the drawing's default weight in the fused score

    def __post_init__(self) -> None:
        if self.views is not None:
            self.views = parse_views(self.views, self.checkpoint)


#: The drawing view's default weight in the fused score, chosen on the shared Sketchy data (see README).
DEFAULT_FUSE_WEIGHT = 0.6


def parse_views(views: str | Sequence[str], checkpoint: str | None) -> list[str]:
    """'drawing,photo' (or a list) -> the views in canonical order; a drawing view needs a checkpoint."""
    names = [v.strip() for v in views.split(",")] if isinstance(views, str) else [str(v) for v in views]
    unknown = [v for v in names if v not in VIEWS]
    if unknown or not names:
        raise UsageError(f"views: unknown view {unknown[0] if unknown else ''!r}; choose from {', '.join(VIEWS)}")
    if "drawing" in names and checkpoint is None:
        raise UsageError("views: the drawing view needs a checkpoint to draw the photos with")
    return [v for v in VIEWS if v in names]


def encoding_views(encoding: Encoding) -> list[str]:
    """The views an Encoding embeds (one, the drawing or the raw photo, when it names none)."""
    return encoding.views or (["drawing"] if encoding.checkpoint else ["photo"])


def encoding_of(manifest: dict) -> Encoding:
    """The Encoding an index was built with, from its manifest."""
    return Encoding(**{k: manifest[k] for k in Encoding.__dataclass_fields__ if k in manifest})


@dataclass
class Report:
    """What a build/add did, for the command's summary line and exit code."""

    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    removed: int = 0
    no_objects: int = 0
    failures: list[str] = field(default_factory=list)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def looks_like_drawing(image: Image.Image, tolerance: int = 8) -> bool:
    """True for single-channel images and RGB images whose channels agree (a scanned or digital sketch)."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return True
    array = np.asarray(image.convert("RGB"), dtype=np.int16)
    spread = array.max(axis=2) - array.min(axis=2)
    return bool(np.percentile(spread, 99) <= tolerance)


class PhotoEncoder:
    """Converts photos to drawings (unless `checkpoint` is None) and embeds them, in batches."""

    def __init__(self, encoding: Encoding, device: str = "cpu", batch_size: int = 16,
                 embedder: Embedder | None = None) -> None:
        self.encoding = encoding
        self.batch_size = batch_size
        self.embedder = embedder or build_embedder(encoding.embedder, device)
        self.device = device
        self._converter = None
        self.objects = None
        if encoding.objects:
            if not encoding.object_source:
                raise UsageError(f"objects={encoding.objects!r} needs an object_source (boxes JSON or masks folder)")
            self.objects = ObjectSource(encoding.object_source, encoding.min_object_area)
            if encoding.objects == "masks" and not self.objects.has_masks:
                raise UsageError(f"{encoding.object_source}: masks mode needs a masks folder, not a boxes file")

    @property
    def converter(self):
        """The photo-to-drawing Converter, loaded on first use (sketch queries never need it)."""
        if self._converter is None and self.encoding.checkpoint is not None:
            import linedraw

            self._converter = linedraw.load(self.encoding.checkpoint, device=self.device,
                                            batch_size=self.batch_size, size=self.encoding.draw_size)
        return self._converter

    def gallery(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, dim * views) gallery vectors: per photo, its views' unit vectors side by side (drawing, photo)."""
        views = encoding_views(self.encoding)
        return np.hstack([self(images, convert=view == "drawing") for view in views]).astype(np.float32)

    def __call__(self, images: Sequence[Image.Image], convert: bool = True) -> np.ndarray:
        """(N, dim) unit vectors for PIL images; photos are converted first when `convert` and a checkpoint."""
        vectors = []
        for start in range(0, len(images), self.batch_size):
            batch = list(images[start:start + self.batch_size])
            if convert and self.converter is not None:
                batch = list(self.converter.batch(batch))
            vectors.append(self.embedder.embed_pil(batch))
        return np.concatenate(vectors) if vectors else np.zeros((0, self.embedder.dim), np.float32)

    def query(self, image: Image.Image, raw: bool = False) -> np.ndarray:
        """A search query: a sketch is embedded as is, a photo is converted first unless `raw`."""
        return self([image], convert=not raw and not looks_like_drawing(image))


# ----------------------------------------------------------------------------------------------- work area


def _work_dir(index_dir: Path) -> Path:
    return index_dir.with_name(index_dir.name + ".work")


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a whole number >= 1, got {value!r}")


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object, so numpy does not append ".npy" to the temp name
        np.save(handle, array)


#: `embed_chunks(encoder, chunks)`: embeds `(number, photos)` chunks elsewhere (e.g. on Ray actors) and yields
#: `(number, vectors, meta)` per chunk, in any order, as `embed_chunk` makes them.
ChunkEmbedder = Callable[[PhotoEncoder, list[tuple[int, list[Path]]]], Iterable[tuple[int, np.ndarray, dict]]]


def embed_photos(photos: Sequence[Path], work: Path, encoder: PhotoEncoder, settings: dict,
                 chunk_size: int = 256, progress: bool = True, *,
                 embed_chunks: ChunkEmbedder | None = None) -> tuple[list[Path], list[str], int]:
    """Embed `photos` into chunk files under `work`, skipping chunks a previous run finished.

    Returns (chunk vector files in order, failure messages, photos without objects). `settings` identify
    the run: a work area left by different settings or photos is cleared first (a folder of that name that
    linedraw did not make is refused, never cleared). `embed_chunks` embeds the missing chunks elsewhere
    (see `ChunkEmbedder`); their files are written here all the same, so publishing does not change.
    """
    _positive("chunk_size", chunk_size)
    identity = json.dumps({"settings": settings, "photos": [str(p) for p in photos]}, sort_keys=True)
    digest = hashlib.sha256(identity.encode()).hexdigest()
    plan_file = work / "plan.json"
    if work.exists() and not plan_file.is_file() and (not work.is_dir() or os.listdir(work)):
        raise UsageError(f"{display_path(work)}: exists but is not a linedraw work area (no plan.json); refusing "
                         "to clear it: move it away")
    if work.exists() and (not plan_file.is_file() or json.loads(plan_file.read_text()).get("digest") != digest):
        tqdm.write(f"{display_path(work)}: left by a different run, starting over", file=sys.stderr)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not plan_file.is_file():
        write_atomic_path(plan_file, lambda tmp: Path(tmp).write_text(json.dumps({"digest": digest, **settings})))
    starts = range(0, len(photos), chunk_size)
    done = sum((work / f"chunk-{i // chunk_size:06d}.json").is_file() for i in starts)
    if done:
        tqdm.write(f"resuming: {done} of {len(starts)} chunks already embedded in {display_path(work)}",
                   file=sys.stderr)
    bar = tqdm(total=len(photos), unit="photo", desc="embedding", disable=not progress,
               initial=min(len(photos), done * chunk_size))
    missing = [(start // chunk_size, list(photos[start:start + chunk_size])) for start in starts
               if not (work / f"chunk-{start // chunk_size:06d}.json").is_file()]
    if embed_chunks is None:
        for number, batch in missing:
            vectors, items, errors, empty = _embed_chunk(batch, encoder, bar)
            _write_chunk(work, number, vectors, _chunk_meta(items, errors, empty))
    else:
        sizes = dict((number, len(batch)) for number, batch in missing)
        for number, vectors, meta in embed_chunks(encoder, missing):
            _write_chunk(work, number, vectors, meta)
            bar.update(sizes[number])
    chunks, failures, no_objects = [], [], 0
    for start in starts:
        name = f"chunk-{start // chunk_size:06d}"
        meta_file, vector_file = work / f"{name}.json", work / f"{name}.npy"
        meta = json.loads(meta_file.read_text())
        failures += meta["failures"]
        no_objects += meta["no_objects"]
        chunks.append(vector_file)
    bar.close()
    return chunks, failures, no_objects


def _chunk_meta(items: Sequence[Item], errors: list[str], empty: int) -> dict:
    return {"items": [asdict(i) for i in items], "failures": errors, "no_objects": empty}


def _write_chunk(work: Path, number: int, vectors: np.ndarray, meta: dict) -> None:
    """A finished chunk's files, vectors first: the .json marks the chunk done."""
    name = f"chunk-{number:06d}"
    write_atomic_path(work / f"{name}.npy", lambda tmp: _save_npy(tmp, vectors))
    write_atomic_path(work / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(meta)))


def embed_chunk(photos: Sequence[Path], encoder: PhotoEncoder) -> tuple[np.ndarray, dict]:
    """One work chunk's (vectors, meta), as `embed_photos` saves them: for engines that embed chunks elsewhere."""
    vectors, items, errors, empty = _embed_chunk(photos, encoder, tqdm(disable=True))
    return vectors, _chunk_meta(items, errors, empty)


def _embed_chunk(photos: Sequence[Path], encoder: PhotoEncoder, bar: tqdm):
    """Read, crop, convert and embed `photos` a batch at a time; returns (vectors, items, errors, no_objects)."""
    encoding, source = encoder.encoding, encoder.objects
    vectors, items, errors, empty = [], [], [], 0
    images, pending = [], 0

    def flush() -> None:
        nonlocal images, pending
        if images:
            vectors.append(encoder.gallery(images))
        bar.update(pending)
        images, pending = [], 0

    for path in photos:
        try:
            stat = os.stat(path)
            photo = open_image(path, mode="RGB")
            base = Item(os.path.abspath(path), stat.st_size, stat.st_mtime, file_sha256(path), *photo.size)
            if source is None:
                images.append(photo)
                items.append(base)
            else:
                objects = source.objects(Path(path), photo.size)
                empty += not objects
                for obj in objects:
                    images.append(crop_object(photo, obj, encoding.objects))
                    items.append(Item(**{**asdict(base), "object": obj.name, "box": obj.box}))
        except (ImageError, OSError) as exc:
            message = str(exc) if isinstance(exc, ImageError) else f"{display_path(path)}: {exc}"
            errors.append(message)  # reported once, with the others, when the command ends
        pending += 1
        if len(images) >= encoder.batch_size:
            flush()
    flush()
    dim = encoder.embedder.dim * len(encoding_views(encoding))
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), items, errors, empty


def _chunk_items(vector_file: Path) -> tuple[np.ndarray, list[Item]]:
    meta = json.loads(vector_file.with_suffix(".json").read_text())
    items = [Item(**{**i, "box": tuple(i["box"]) if i["box"] else None}) for i in meta["items"]]
    return np.load(vector_file), items


def _training_sample(chunks: Sequence[Path], total: int, limit: int = MAX_TRAIN_VECTORS) -> np.ndarray:
    rng = np.random.default_rng(0)
    keep = min(1.0, limit / max(1, total))
    parts = []
    for chunk in chunks:
        vectors = np.load(chunk)
        parts.append(vectors[rng.random(len(vectors)) < keep] if keep < 1 else vectors)
    return np.concatenate(parts)


# ----------------------------------------------------------------------------------------------- commands


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N); None -> the process rank and world size that `accelerate launch` / torchrun set."""
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    index, _, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        raise UsageError(f"shard wants I/N (e.g. 0/8), got {text!r}") from None
    if not 0 <= shard[0] < shard[1]:
        raise UsageError(f"shard {text!r}: need 0 <= I < N")
    return shard


def input_folders(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """The folders among `inputs` (files, folders, glob patterns), globs expanded: an index must not be
    written inside them."""
    folders = []
    for item in inputs:
        text = os.fspath(item)
        matches = [text] if os.path.exists(text) or not glob.has_magic(text) else glob.glob(text, recursive=True)
        folders += [m for m in matches if os.path.isdir(m)]
    return folders


def build_index(gallery: Iterable[str], output: str | os.PathLike, encoding: Encoding, *, kind: str = "auto",
                memory: int = 8 << 30, on_disk: bool | None = None, like: str | None = None,
                shard: tuple[int, int] = (0, 1), device: str = "cpu", batch_size: int = 16,
                chunk_size: int = 256, progress: bool = True, encoder: PhotoEncoder | None = None,
                wait: float = 0.0, embed_chunks: ChunkEmbedder | None = None) -> Report:
    """Build a new index at `output` from the photos under `gallery`, replacing an index there (but refusing
    any other existing folder, or one inside the photo folders; see `check_output`).

    `like` reuses another index's encoding and trained IVF-PQ quantizer (needed for shards that will be
    merged); `shard=(i, n)` takes every n-th photo from the i-th and numbers items from `i << 40`. Waits up to
    `wait` seconds for another writer of `output`. `embed_chunks` embeds elsewhere (see `embed_photos`).
    """
    output, gallery = Path(output), list(gallery)
    _positive("batch_size", batch_size)
    _positive("chunk_size", chunk_size)
    check_output(output, input_folders(gallery))
    output.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(output, wait):
        template = GalleryIndex.open(like) if like else None
        if template is not None:
            encoding = encoding_of(template.manifest)
        photos = [p for p, _ in list_images(gallery)][shard[0]::shard[1]]
        encoder = encoder or PhotoEncoder(encoding, device, batch_size)
        work = _work_dir(output)
        settings = {"encoding": asdict(encoding), "shard": list(shard)}
        chunks, failures, no_objects = embed_photos(photos, work, encoder, settings, chunk_size, progress,
                                                     embed_chunks=embed_chunks)
        total = sum(len(np.load(c, mmap_mode="r")) for c in chunks)
        dim = encoder.embedder.dim
        if template is not None:
            faiss_index = empty_clone(template.index)
            manifest = {k: template.manifest[k] for k in ("kind", "factory", "nprobe", "ef_search", "on_disk",
                                                          "refine") if k in template.manifest}
            template.close()
        else:
            if total == 0:
                raise MissingFileError(f"no photo could be indexed from {', '.join(map(display_path, gallery))}"
                                       + (f" ({len(failures)} failed: {failures[0]})" if failures else ""))
            plan = plan_index(kind, total, dim * len(encoding_views(encoding)), memory, on_disk)
            faiss_index = create_faiss_index(plan, dim * len(encoding_views(encoding)))
            if not faiss_index.is_trained:  # IVF-PQ: 64 points per cell are plenty, 500k at least if available
                cells = faiss.extract_index_ivf(faiss_index).nlist
                faiss_index.train(_training_sample(chunks, total, max(MAX_TRAIN_VECTORS, 64 * cells)))
            manifest = asdict(plan)
        views = encoding_views(encoding)
        weight = encoding.fuse_weight if encoding.fuse_weight is not None else DEFAULT_FUSE_WEIGHT
        manifest.update(asdict(encoding), dim=dim, embedder_name=encoder.embedder.name, views=views,
                        fuse_weight=weight if len(views) > 1 else None,
                        next_id=shard[0] << SHARD_ID_BITS, shard=list(shard) if shard[1] > 1 else None)
        index = GalleryIndex.create(output, manifest, faiss_index)
        try:
            for chunk in chunks:
                vectors, items = _chunk_items(chunk)
                index.add(vectors, items)
            index.commit()
        except BaseException:
            index.discard()
            raise
        index.close()
        shutil.rmtree(work, ignore_errors=True)
    return Report(added=total, no_objects=no_objects, failures=failures)


def add_to_index(index_dir: str | os.PathLike, paths: Iterable[str], *, device: str = "cpu",
                 batch_size: int = 16, chunk_size: int = 256, progress: bool = True,
                 encoder: PhotoEncoder | None = None, wait: float = 0.0) -> Report:
    """Add new photos and re-embed changed ones (content hash differs); unchanged photos are skipped. Holds
    the index's writer lock throughout (waiting up to `wait` seconds for another writer)."""
    index_dir = Path(index_dir)
    _positive("batch_size", batch_size)
    _positive("chunk_size", chunk_size)
    with writer_lock(index_dir, wait, existing=True):
        current = GalleryIndex.open(index_dir)
        encoding = encoding_of(current.manifest)
        report = Report()
        todo, stale_ids, touched = [], [], []
        for path, _ in list_images(paths):
            absolute = os.path.abspath(path)
            known = current.items_for_path(absolute)
            if known:
                try:
                    stat = os.stat(path)
                    same = (stat.st_size, stat.st_mtime) == (known[0].size, known[0].mtime)
                    if not same and file_sha256(path) == known[0].sha256:
                        same = True
                        touched.append((stat.st_mtime, absolute))
                except OSError as exc:
                    report.failures.append(f"{display_path(path)}: {exc.strerror or exc}")
                    continue
                if same:
                    report.unchanged += 1
                    continue
                stale_ids += [i.id for i in known]
                report.replaced += 1
            todo.append(Path(path))
        current.close()
        if not todo and not touched:
            return report
        encoder = encoder or PhotoEncoder(encoding, device, batch_size)
        work = _work_dir(index_dir)
        chunks, failures, report.no_objects = embed_photos(todo, work, encoder, {"add": asdict(encoding)},
                                                           chunk_size, progress)
        report.failures += failures
        with GalleryIndex.edit(index_dir) as index:
            index.remove(stale_ids)
            for chunk in chunks:
                vectors, items = _chunk_items(chunk)
                index.add(vectors, items)
                report.added += len(items)
            index.db.executemany("UPDATE items SET mtime = ? WHERE path = ?", touched)
        shutil.rmtree(work, ignore_errors=True)
    return report


def remove_from_index(index_dir: str | os.PathLike, paths: Iterable[str],
                      wait: float = 0.0) -> tuple[int, list[str]]:
    """Remove the items of photos (files, every photo under a folder, or glob patterns as `add_to_index`
    takes them), present on disk or not. Returns (items removed, the paths that matched nothing)."""
    with GalleryIndex.edit(index_dir, wait=wait) as index:
        ids, unmatched = [], []
        for path in paths:
            absolute = os.path.abspath(path)
            rows = index.db.execute("SELECT id FROM items WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                                    (absolute, like_prefix(absolute) + "%")).fetchall()
            if not rows and glob.has_magic(path):
                rows = _glob_rows(index, absolute)
            if not rows:
                unmatched.append(path)
            ids += [r[0] for r in rows]
        removed = index.remove(ids)
    return removed, unmatched


def _glob_rows(index: GalleryIndex, pattern: str) -> list[tuple[int]]:
    """Ids of the items whose path matches the absolute glob `pattern` (or lies under a folder it matches),
    with `glob.glob(recursive=True)`'s rules: `*`, `?`, `[...]` within one name, `**` across folders, and
    hidden names matched only by patterns that start with a dot."""
    parts = pattern.split(os.sep)
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    base = os.sep.join(parts[:fixed])
    rows = index.db.execute("SELECT id, path FROM items WHERE path LIKE ? ESCAPE '\\'",
                            (like_prefix(base) + "%",)).fetchall()
    return [(id_,) for id_, path in rows if _glob_match(parts[fixed:], path.split(os.sep)[fixed:])]


def _glob_match(pattern: Sequence[str], names: Sequence[str]) -> bool:
    if not pattern:
        return True  # the pattern named this path or a folder above it
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_glob_match(rest, names[i:]) for i in range(len(names) + 1)
                   if not any(n.startswith(".") for n in names[:i]))
    return (bool(names) and (head.startswith(".") or not names[0].startswith("."))
            and fnmatch.fnmatchcase(names[0], head) and _glob_match(rest, names[1:]))
