"""Sketch-based retrieval evaluation of an index: category- and instance-level metrics (see `metrics.py`).

Queries sit in class folders (`QUERIES/<class>/<name>.png`) and so do the gallery photos the index was built
from; a query named `<photo-id>-N.<ext>` was drawn from the gallery photo `<photo-id>.*` (Sketchy's naming),
which enables instance-level acc@K.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from linedraw.errors import MissingFileError
from linedraw.images import ImageError, list_images, open_image
from linedraw.retrieval.gallery import PhotoEncoder
from linedraw.retrieval.index import GalleryIndex
from linedraw.retrieval.metrics import DEFAULT_KS, category_metrics, instance_accuracy
from linedraw.retrieval.names import photo_id_of_sketch


@dataclass
class Queries:
    """Embedded queries with their class and (when the name says) source photo id."""

    paths: list[Path]
    labels: list[str]
    photo_ids: list[str | None]
    vectors: np.ndarray


def embed_queries(folder: str | Path, encoder: PhotoEncoder, batch_size: int = 64, progress: bool = True) -> Queries:
    """Embed every image under `folder` as is (queries are sketches); unreadable files are reported and skipped."""
    paths, images, vectors = [], [], []
    found = [p for p, _ in list_images([folder])]
    if not found:
        raise MissingFileError(f"{folder}: no query images")
    for path in tqdm(found, unit="query", desc="queries", disable=not progress):
        try:
            images.append(open_image(path, mode="RGB"))
            paths.append(Path(path))
        except ImageError as exc:
            tqdm.write(f"skipped {exc}", file=sys.stderr)
        if len(images) == batch_size:
            vectors.append(encoder(images, convert=False))
            images = []
    if images:
        vectors.append(encoder(images, convert=False))
    labels = [p.parent.name for p in paths]
    photo_ids = [photo_id_of_sketch(p.stem) for p in paths]
    return Queries(paths, labels, photo_ids, np.concatenate(vectors))


def evaluate(index: GalleryIndex, queries: Queries, ks: Sequence[int] = DEFAULT_KS, map_at: int = 200,
             instance_ks: Sequence[int] = (1, 10), fuse_weight: float | None = None) -> dict[str, float]:
    """Rank the whole gallery for every query and compute the metrics; labels are parent folder names.
    `fuse_weight` weighs the drawing view of a two-view index (1: drawings only, 0: photos only)."""
    items = list(index.all_items())
    label_of = {i.id: Path(i.path).parent.name for i in items}
    photo_of = {i.id: Path(i.path).stem for i in items}
    counts: dict[str, int] = {}
    for label in label_of.values():
        counts[label] = counts.get(label, 0) + 1
    # an empty index still answers (with -1s)
    _, ids = index.search(queries.vectors, max(1, index.count), fuse_weight=fuse_weight)
    ranked_labels = np.array([[label_of.get(int(i), "") for i in row] for row in ids], dtype=object)
    results = category_metrics(ranked_labels, queries.labels, [counts.get(q, 0) for q in queries.labels],
                               ks, map_at)
    gallery_photos = set(photo_of.values())
    instance_rows = [q for q, photo in enumerate(queries.photo_ids) if photo in gallery_photos]
    if instance_rows:
        ranked_photos = np.array([[photo_of.get(int(i), "") for i in ids[q]] for q in instance_rows], dtype=object)
        results.update(instance_accuracy(ranked_photos, [queries.photo_ids[q] for q in instance_rows], instance_ks))
    results["queries"] = float(len(queries.paths))
    results["gallery"] = float(index.count)
    return results


def view_columns(index: GalleryIndex, queries: Queries, fuse_weight: float | None = None) -> dict[str, dict]:
    """The metrics of each view of one index and, with two views, of their fusion (`fuse_weight`, default the
    manifest's): {"raw photos": ..., "drawings (CHECKPOINT)": ..., "fused (w=W)": ...}."""
    m = index.manifest
    if len(index.views) == 1:
        name = f"drawings ({m['checkpoint']})" if index.views == ["drawing"] else "raw photos"
        return {name: evaluate(index, queries)}
    weight = index.fuse_weight if fuse_weight is None else fuse_weight
    return {"raw photos": evaluate(index, queries, fuse_weight=0.0),
            f"drawings ({m['checkpoint']})": evaluate(index, queries, fuse_weight=1.0),
            f"fused (w={weight:g})": evaluate(index, queries, fuse_weight=weight)}


def sweep(index: GalleryIndex, queries: Queries, step: float = 0.1,
          metrics: Sequence[str] = ("mAP@all", "P@1", "acc@10")) -> list[dict[str, float]]:
    """`metrics` of a two-view index for fuse weights 0, step, ..., 1 (choosing the default weight)."""
    steps = int(round(1 / step))
    rows = []
    for i in range(steps + 1):
        weight = round(i / steps, 6)
        result = evaluate(index, queries, fuse_weight=weight)
        rows.append({"fuse_weight": weight, **{k: result[k] for k in metrics if k in result}})
    return rows


def format_table(columns: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per metric (in the first column's order), one column per evaluated index."""
    names = list(columns)
    metrics = list(next(iter(columns.values())))
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for metric in metrics:
        cells = []
        for name in names:
            value = columns[name].get(metric)
            cells.append("" if value is None else (f"{int(value)}" if metric in ("queries", "gallery")
                                                   else f"{value:.4f}"))
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
