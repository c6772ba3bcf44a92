"""Conversion and index embedding as Ray Data pipelines: `--engine ray` of `linedraw convert` / `index build`.

The driver (this process) plans the work exactly as the local engine does (`plan_outputs`, the list of index
chunks) and reports it; Ray actors, each loading the model once, do the work in batches: `convert_files` on
their share (so decoding, batch retry, atomic writes and per-photo failures are the local engine's own), or
`gallery.embed_chunk` for index chunks, whose files the driver writes into `<INDEX>.work/` as a local build
does. A task whose actor dies is retried on another actor. One GPU per actor where the cluster has GPUs.

Connects to the cluster `RAY_ADDRESS` names (or `address`), else starts a local Ray instance. Photos and
outputs must be reachable under the same paths from every node (a shared file system or a mounted bucket).
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from linedraw.errors import MissingDependencyError, UsageError
from linedraw.pipeline import (FORMATS, ConversionInterrupted, Summary, Task, _same_file, failure_reason,
                               remove_stale_outputs, write_errors_csv)

if TYPE_CHECKING:
    import numpy as np

    from linedraw.images import PathLike
    from linedraw.retrieval.gallery import Encoding, PhotoEncoder, Report

#: Photos per Ray task: large enough to keep an actor's batches full, small enough that a retried task redoes
#: little.
TASK_SIZE = 32
#: Restarts of a dead actor, and retries of the task it was running, before the run fails (where Ray takes them).
MAX_RETRIES = 3


def require_ray():
    """The `ray` module with Ray Data, or a one-line `MissingDependencyError` saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError("the ray engine needs Ray Data: pip install 'linedraw[ray]'") from None
    return ray


def connect(address: str | None = None):
    """Join the cluster at `address` (None: `RAY_ADDRESS`, else a new local instance) unless already connected."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    return ray


def actor_plan(device: str, actors: int | None) -> tuple[int, float, str]:
    """(actors, GPUs per actor, the device each actor runs on) for `device` on the connected cluster.

    `auto` takes one GPU per actor when the cluster has GPUs, else the CPU; `actors` defaults to the cluster's
    GPUs (or CPUs)."""
    import ray

    if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
        raise UsageError(f"actors must be a whole number >= 1, got {actors!r}")
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    device = str(device)
    if device.startswith("cuda") and not gpus:
        raise UsageError(f"device {device!r}: the Ray cluster has no GPUs")
    on_gpu = gpus > 0 and (device == "auto" or device.startswith("cuda"))
    if on_gpu:
        return actors or gpus, 1.0, "cuda"  # Ray gives each actor its own GPU as cuda:0
    return actors or cpus, 0.0, "cpu" if device == "auto" else device


def portable_checkpoint(checkpoint: str | None) -> str | None:
    """A checkpoint as the actors must name it: an existing path made absolute, a shipped name as it is."""
    return os.path.abspath(checkpoint) if checkpoint is not None and os.path.exists(checkpoint) else checkpoint


def _map(dataset, actor: type, args: tuple, actors: int, gpus: float, batch_size: int, progress: bool):
    """`dataset.map_batches` through a pool of `actors` actors of class `actor`, retrying failed tasks."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = progress
    if not progress:  # Ray Data logs its progress as INFO lines where stdout is not a terminal
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    retries = {}
    # Bounded, so a photo that kills every worker stops the run; Ray Data's own default retries forever. Ray takes
    # these only as the **ray_remote_args it deprecates (gone from 2.64): without them, its default applies.
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(dataset.map_batches).parameters.values()):
        retries = {"max_restarts": MAX_RETRIES, "max_task_retries": MAX_RETRIES}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return dataset.map_batches(actor, fn_constructor_args=args, batch_size=batch_size, batch_format="numpy",
                                   compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1, num_gpus=gpus,
                                   **retries)


# -------------------------------------------------------------------------------------------------- convert


class _Converting:
    """A Ray actor: loads the converter once, then runs `convert_files` on each batch of tasks it is given."""

    def __init__(self, make_converter: Callable, device: str, options: dict) -> None:
        from linedraw.convert import resolve_device

        self.converter = make_converter(resolve_device(device))
        self.options = options

    def __call__(self, batch: dict) -> dict:
        from linedraw.pipeline import convert_files

        tasks = [Task(Path(s), Path(t)) for s, t in zip(batch["source"], batch["target"])]
        status, reasons = ["converted"] * len(tasks), [""] * len(tasks)
        todo, where = [], {}
        for i, task in enumerate(tasks):
            if self.options["skip_existing"] and task.target.exists() and not _same_file(task.source, task.target):
                status[i] = "skipped"
            else:
                todo.append(task)
                where[id(task)] = i

        def failed(task: Task, reason: str) -> None:
            status[where[id(task)]], reasons[where[id(task)]] = "failed", reason

        convert_files(self.converter, todo, format=self.options["format"], workers=self.options["workers"],
                      on_error=failed,
                      on_warning=lambda line: print(f"warning: {line}", file=sys.stderr),
                      explain=self.options["explain"], temporal=self.options["temporal"], clean_stale=False)
        return {"source": list(batch["source"]), "status": status, "reason": reasons}


def convert_files_ray(make_converter: Callable, tasks: Sequence[Task], *, device: str = "auto",
                      actors: int | None = None, workers: int | None = None, format: str = "png",
                      skip_existing: bool = False, errors: PathLike | None = None,
                      on_error: Callable[[Task, str], object] | None = None,
                      on_warning: Callable[[str], object] | None = None,
                      explain: Callable[[Exception], str] = failure_reason, temporal: float = 0.0,
                      progress: bool = False, address: str | None = None) -> Summary:
    """`linedraw.pipeline.convert_files` on Ray actors: each actor builds its converter once with
    `make_converter(device)` (a picklable callable taking a torch device) and converts batches of `tasks`,
    with `workers` decoding and saving threads each (None: 2 beside a GPU, none on the CPU, whose actor has
    one core).

    Same skip-existing, per-photo failures (`on_error(task, reason)`, the `errors` CSV), atomic writes and
    `Summary` as the local engine; `on_warning` hears the driver's warnings (actors' go to their log, which
    Ray forwards here); `progress` shows Ray Data's progress. Ctrl-C raises `ConversionInterrupted` with the
    summary so far.
    """
    import time

    from linedraw.images import check_writable, display_path

    if format not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(sorted(FORMATS))}, got {format!r}")
    if not (isinstance(temporal, (int, float)) and 0.0 <= temporal < 1.0):
        raise UsageError(f"temporal must be in [0, 1) (0 = no smoothing), got {temporal!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise UsageError(f"workers must be an integer >= 0 (0 = decode and save in the worker's thread), "
                         f"got {workers!r}")
    if errors is not None:
        check_writable(errors)
    tasks = list(tasks)
    by_source = {os.path.abspath(task.source): task for task in tasks}
    summary = Summary()
    if not tasks:
        return summary
    ray = connect(address)
    count, gpus, actor_device = actor_plan(device, actors)
    remove_stale_outputs(tasks, on_warning)
    if workers is None:
        workers = 2 if gpus else 0
    options = {"format": format, "skip_existing": skip_existing, "explain": explain, "temporal": temporal,
               "workers": workers}
    rows = ray.data.from_items([{"source": os.path.abspath(t.source), "target": os.path.abspath(t.target)}
                                for t in tasks])  # absolute: the actors' working folder is not ours
    results = _map(rows, _Converting, (make_converter, actor_device, options), count, gpus, TASK_SIZE, progress)
    start = time.perf_counter()
    done = 0
    try:
        for row in results.iter_rows():
            done += 1
            if row["status"] == "converted":
                summary.converted += 1
            elif row["status"] == "skipped":
                summary.skipped += 1
            else:
                task = by_source[str(row["source"])]
                summary.failures.append((display_path(task.source), str(row["reason"])))
                if on_error is not None:
                    on_error(task, str(row["reason"]))
    except KeyboardInterrupt:
        summary.elapsed = time.perf_counter() - start
        summary.left = len(tasks) - done
        if errors is not None:
            write_errors_csv(errors, summary.failures)
        raise ConversionInterrupted(summary) from None
    summary.elapsed = time.perf_counter() - start
    if errors is not None:
        write_errors_csv(errors, summary.failures)
    return summary


# -------------------------------------------------------------------------------------------------- index


class _Embedding:
    """A Ray actor: builds a `PhotoEncoder` once, then embeds one work chunk per call (`gallery.embed_chunk`)."""

    def __init__(self, encoding: Encoding, device: str, batch_size: int) -> None:
        from linedraw.convert import resolve_device
        from linedraw.retrieval.gallery import PhotoEncoder

        self.encoder = PhotoEncoder(encoding, resolve_device(device), batch_size)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from linedraw.retrieval.gallery import embed_chunk

        numbers, vectors, metas = [], [], []
        for number, photos in zip(batch["chunk"], batch["photos"]):
            array, meta = embed_chunk([Path(p) for p in json.loads(str(photos))], self.encoder)
            data = io.BytesIO()
            np.save(data, array)
            numbers.append(int(number))
            vectors.append(data.getvalue())
            metas.append(json.dumps(meta))
        return {"chunk": numbers, "vectors": vectors, "meta": metas}


def chunk_embedder(device: str = "auto", actors: int | None = None, address: str | None = None,
                   progress: bool = True):
    """A `gallery.ChunkEmbedder` that embeds each missing chunk on a Ray actor (with the encoder's encoding and
    batch size) and yields the chunks back as they finish."""

    def embed_chunks(encoder: PhotoEncoder, chunks: list[tuple[int, list[Path]]]
                     ) -> Iterator[tuple[int, np.ndarray, dict]]:
        import numpy as np

        if not chunks:
            return
        ray = connect(address)
        count, gpus, actor_device = actor_plan(device, actors)
        rows = ray.data.from_items([{"chunk": number, "photos": json.dumps([os.path.abspath(p) for p in photos])}
                                    for number, photos in chunks])  # absolute: the actors' working folder differs
        encoding = dataclasses.replace(encoder.encoding, checkpoint=portable_checkpoint(encoder.encoding.checkpoint))
        results = _map(rows, _Embedding, (encoding, actor_device, encoder.batch_size),
                       min(count, len(chunks)), gpus, 1, progress)
        for row in results.iter_rows():
            yield int(row["chunk"]), np.load(io.BytesIO(row["vectors"])), json.loads(row["meta"])

    return embed_chunks


def build_index_ray(gallery: Iterable[str], output: PathLike, encoding: Encoding, *, device: str = "auto",
                    actors: int | None = None, address: str | None = None, **options) -> Report:
    """`gallery.build_index` with the drawing and embedding on Ray actors; the index is published by the local
    code (lock, manifest, Faiss), so it equals a local build. `options` are `build_index`'s."""
    from linedraw.retrieval.gallery import build_index

    require_ray()
    return build_index(gallery, output, encoding, device="cpu", **options,
                       embed_chunks=chunk_embedder(device, actors, address, options.get("progress", True)))
