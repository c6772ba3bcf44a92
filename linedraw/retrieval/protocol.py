"""The zero-shot protocol for the sketch embedder: train on some classes, test on classes never seen.

On a Sketchy-style tree (`photo/<class>/<id>.jpg`, `sketch/<class>/<id>-N.png`) the classes are split with a
seed (the split is written to `split.json`), one embedder is trained per gallery kind (generated drawings,
raw photos) on the training classes, and on the unseen classes, with sketches as queries, the table reports
mAP@all, P@25 and instance-level acc@1 / acc@10 (definitions in `linedraw.retrieval.metrics`) for
raw photos + base, drawings + base, drawings + trained, raw photos + trained, and the two views fused
(w cos(query, drawing) + (1 - w) cos(query, photo), as a two-view index ranks) with each embedder.
"""
from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from linedraw.errors import InvalidFileError, MissingFileError, UsageError
from linedraw.images import write_text_atomic
from linedraw.retrieval.gallery import DEFAULT_FUSE_WEIGHT
from linedraw.retrieval.metrics import category_metrics, instance_accuracy
from linedraw.retrieval.train_embedder import (
    EmbedderTrainConfig,
    LabeledImages,
    drop_unreadable,
    load_images,
    scan_pairs,
    train_embedder,
)
from linedraw.retrieval.trained import TrainedEmbedder

SPLIT_FILE = "split.json"
COLUMNS = ("mAP@all", "P@25", "acc@1", "acc@10")


def split_classes(classes: Sequence[str], unseen: int, seed: int) -> dict:
    """A seeded split of `classes` into training and unseen classes (both sorted)."""
    names = sorted(classes)
    if not 0 < unseen < len(names):
        raise UsageError(f"unseen must be between 1 and {len(names) - 1} for {len(names)} classes, got {unseen}")
    shuffled = names[:]
    random.Random(seed).shuffle(shuffled)
    return {"seed": seed, "unseen": sorted(shuffled[:unseen]), "train": sorted(shuffled[unseen:])}


def load_or_write_split(path: Path, classes: Sequence[str], unseen: int, seed: int) -> dict:
    """Reuse the split in `path` when it was made from the same classes, seed and size; else write a new one."""
    split = split_classes(classes, unseen, seed)
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != split:
            raise InvalidFileError(f"{path} holds another split (other seed, size or classes); "
                                   "use a new output dir or delete the file")
        return existing
    write_text_atomic(path, json.dumps(split, indent=2) + "\n")
    return split


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Classes from a protocol `split.json` (its "train" list) or a text file with one class per line."""
    text = Path(path).read_text()
    if Path(path).suffix == ".json":
        data = json.loads(text)
        if "train" not in data:
            raise InvalidFileError(f"{path}: a class file in JSON needs a 'train' list")
        return list(data["train"])
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def convert_tree(photo_root: Path, out_root: Path, checkpoint: str, classes: Sequence[str] | None = None,
                 device: str = "auto", batch_size: int = 8, size: int = 256) -> tuple[Path, list[str]]:
    """Convert `photo_root/<class>/<id>.*` to `out_root/<class>/<id>.png` with a drawing checkpoint, drawn at
    `size` px (the embedders see 224 px, so more costs time and adds nothing).

    Existing outputs are kept, so an interrupted run continues; returns (out_root, errors of unreadable photos)."""
    import linedraw
    from linedraw.pipeline import convert_files, plan_outputs

    tasks = [task for task in plan_outputs([photo_root], out_root)
             if classes is None or task.target.relative_to(out_root).parts[0] in classes]
    if all(task.target.is_file() for task in tasks):
        return out_root, []
    converter = linedraw.load(checkpoint, device=device, batch_size=batch_size, size=size)
    summary = convert_files(converter, tasks, skip_existing=True, progress=True)
    return out_root, [f"{path}: {reason}" for path, reason in summary.failures]


@dataclass
class ProtocolConfig:
    """One protocol run; `train` holds the embedder settings shared by both gallery kinds."""

    data: str
    output_dir: str
    drawings: str | None = None
    checkpoint: str | None = None
    unseen: int = 10
    seed: int = 0
    device: str = "auto"
    draw_size: int = 256
    train: EmbedderTrainConfig | None = None
    fuse_weight: float = DEFAULT_FUSE_WEIGHT  # the drawing's weight in the fused rows, as indexes default to


def _embed(encoder_fn, images: LabeledImages, channels: int, size, batch_size: int, device) -> torch.Tensor:
    from tqdm.auto import tqdm

    rows = []
    for start in tqdm(range(0, len(images.paths), batch_size), desc="embedding", unit="batch", leave=False):
        batch = load_images(images.paths[start : start + batch_size], size, channels).to(device)
        with torch.inference_mode():
            rows.append(encoder_fn(batch).float().cpu())
    return torch.cat(rows)


def retrieval_scores(queries: torch.Tensor, query_labels: torch.Tensor, query_instances: torch.Tensor,
                     gallery: torch.Tensor, gallery_labels: torch.Tensor, gallery_instances: torch.Tensor) -> dict:
    """mAP@all, P@25 (category level) and acc@1 / acc@10 (instance level, paired queries only) by cosine."""
    q, g = F.normalize(queries, dim=-1), F.normalize(gallery, dim=-1)
    return similarity_scores(q @ g.T, query_labels, query_instances, gallery_labels, gallery_instances)


def similarity_scores(similarity: torch.Tensor, query_labels: torch.Tensor, query_instances: torch.Tensor,
                      gallery_labels: torch.Tensor, gallery_instances: torch.Tensor) -> dict:
    """The table's metrics from a (queries, gallery) score matrix, each row ranked by decreasing score."""
    order = torch.argsort(similarity, dim=1, descending=True, stable=True).numpy()
    g_labels, g_instances = gallery_labels.numpy(), gallery_instances.numpy()
    counts = np.bincount(g_labels, minlength=int(max(g_labels.max(), query_labels.max())) + 1)
    q_labels = query_labels.numpy()
    scores = category_metrics(g_labels[order], q_labels, counts[q_labels], ks=(25,))
    paired = query_instances.numpy() >= 0
    if paired.any():
        scores.update(instance_accuracy(g_instances[order][paired], query_instances.numpy()[paired], ks=(1, 10)))
    else:
        scores.update({"acc@1": float("nan"), "acc@10": float("nan")})
    return {k: scores[k] for k in COLUMNS}


def _cosines(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    return F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T


def _same_photos(photos: LabeledImages, drawings: LabeledImages) -> list[int] | None:
    """For each raw photo, the row of its drawing (same class folder and stem); None if any has none."""
    rows = {(p.parent.name, p.stem): i for i, p in enumerate(drawings.paths)}
    order = [rows.get((p.parent.name, p.stem)) for p in photos.paths]
    return None if any(i is None for i in order) else order


def evaluate_unseen(
    splits: dict[str, tuple[LabeledImages, LabeledImages]], trained: dict[str, TrainedEmbedder],
    batch_size: int, device: torch.device, fuse_weight: float = DEFAULT_FUSE_WEIGHT,
) -> dict[str, dict[str, float]]:
    """The table rows from {gallery kind: (sketch queries, gallery)}. Base features are computed once and
    projected by each trained head (exactly `trained.encode` when no base layer was unfrozen). With both
    kinds, "fused" rows rank the photos by `fuse_weight` * cos(query, drawing) + (1 - `fuse_weight`) *
    cos(query, photo) (with the trained embedders: each view's own, as two trained indexes would)."""
    names = {"photos": "raw photos", "drawings": "drawings"}
    first = next(iter(trained.values()))
    size, query_base, rows, cosines = first.input_size, None, {}, {}
    for kind, (sketches, gallery) in splits.items():
        if query_base is None:  # the sketch files are the same for every gallery kind; only pair ids differ
            query_base = _embed(first.base_features, sketches, 1, size, batch_size, device)
        channels = 3 if kind == "photos" else 1
        gallery_base = _embed(first.base_features, gallery, channels, size, batch_size, device)
        queries, items = (sketches.labels, sketches.instances), (gallery.labels, gallery.instances)
        rows[f"{names[kind]} + base"] = retrieval_scores(query_base, *queries, gallery_base, *items)
        cosines[kind, "base"] = _cosines(query_base, gallery_base)
        model = trained[kind]
        if model.unfrozen_names():
            q = _embed(model.encode, sketches, 1, size, batch_size, device)
            g = _embed(model.encode, gallery, channels, size, batch_size, device)
        else:
            with torch.inference_mode():
                q, g = model.project(query_base.to(device)).cpu(), model.project(gallery_base.to(device)).cpu()
        rows[f"{names[kind]} + trained"] = retrieval_scores(q, *queries, g, *items)
        cosines[kind, "trained"] = _cosines(q, g)
    aligned = _same_photos(splits["photos"][1], splits["drawings"][1]) if len(splits) == 2 else None
    if aligned is not None:
        sketches, photos = splits["photos"]
        for embedder in ("base", "trained"):
            fused = (fuse_weight * cosines["drawings", embedder][:, aligned]
                     + (1 - fuse_weight) * cosines["photos", embedder])
            rows[f"fused (w={fuse_weight:g}) + {embedder}"] = similarity_scores(
                fused, sketches.labels, sketches.instances, photos.labels, photos.instances)
    order = ["raw photos + base", "drawings + base", f"fused (w={fuse_weight:g}) + base", "drawings + trained",
             "raw photos + trained", f"fused (w={fuse_weight:g}) + trained"]
    return {k: rows[k] for k in order if k in rows}


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per (gallery + embedder), the metric columns."""
    lines = ["| gallery + embedder | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name, scores in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{scores[c]:.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def run_protocol(config: ProtocolConfig) -> tuple[dict, list[str]]:
    """Split, (convert,) train both embedders, evaluate on unseen classes; writes split.json, results.json and
    results.md into `config.output_dir`. Every stage resumes. Returns (results, errors about unreadable files)."""
    from accelerate import Accelerator

    data, out = Path(config.data), Path(config.output_dir)
    photo_root, sketch_root = data / "photo", data / "sketch"
    for root in (photo_root, sketch_root):
        if not root.is_dir():
            raise MissingFileError(f"{root}: missing (expected a Sketchy-style tree with photo/ and sketch/)")
    out.mkdir(parents=True, exist_ok=True)
    classes = sorted(p.name for p in photo_root.iterdir() if p.is_dir() and (sketch_root / p.name).is_dir())
    split = load_or_write_split(out / SPLIT_FILE, classes, config.unseen, config.seed)
    errors: list[str] = []
    if config.drawings:
        drawing_root, drawing_source = Path(config.drawings), f"precomputed: {config.drawings}"
    elif config.checkpoint:
        drawing_root, errors = convert_tree(photo_root, out / "drawings", config.checkpoint, device=config.device,
                                              size=config.draw_size)
        drawing_source = f"checkpoint: {config.checkpoint}"
    else:
        raise UsageError("the drawings arm needs drawings (a folder) or checkpoint (a name or path)")

    base_train = config.train or EmbedderTrainConfig(sketches="", gallery="", output_dir="")
    galleries_root = {"photos": photo_root, "drawings": drawing_root}
    trained: dict[str, TrainedEmbedder] = {}
    for kind, root in galleries_root.items():
        train_config = replace(base_train, sketches=str(sketch_root), gallery=str(root), gallery_kind=kind,
                               output_dir=str(out / f"embedder-{kind}"), classes=split["train"], seed=config.seed,
                               feature_cache=str(out / "features"))
        model, bad = train_embedder(train_config)
        errors += bad
        trained[kind] = model

    device = Accelerator(cpu=config.device == "cpu").device
    splits = {}
    for kind, root in galleries_root.items():
        sketches, gallery = scan_pairs(sketch_root, root, split["unseen"])
        sketches, bad_s = drop_unreadable(sketches, "checking unseen sketches")
        gallery, bad_g = drop_unreadable(gallery, f"checking unseen {kind}")
        splits[kind] = (sketches, gallery)
        errors += bad_g + (bad_s if kind == "photos" else [])
    rows = evaluate_unseen(splits, {k: m.to(device) for k, m in trained.items()}, base_train.batch_size, device,
                           config.fuse_weight)
    galleries = {kind: gallery for kind, (_, gallery) in splits.items()}
    results = {
        "rows": rows,
        "base": base_train.base,
        "drawings": drawing_source,
        "split": split,
        "queries": len(sketches.paths),
        "gallery": {k: len(v.paths) for k, v in galleries.items()},
        "chance_mAP": 1.0 / len(split["unseen"]),
        "train": {k: str(out / f"embedder-{k}") for k in galleries_root},
    }
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    header = (f"Unseen classes: {len(split['unseen'])} (seed {config.seed}); base {base_train.base}; "
              f"drawings from {drawing_source}; {len(sketches.paths)} sketch queries\n\n")
    write_text_atomic(out / "results.md", header + format_table(rows) + "\n")
    for line in errors:
        print(f"warning: skipped {line}", file=sys.stderr)
    return results, errors

