"""`linedraw convert INPUT... -o OUTDIR`: photos to line drawings, one photo or a million.

Inputs are files, directories (recursive) and globs; outputs mirror the input tree as `<stem>.png` (or
`--format`). Decoding runs in `--workers` threads and saving in another pool, so the device stays busy.
Bad files are reported one line each (and in `--errors FILE` as CSV) and never stop the batch; the exit
code is 0 only when nothing failed. Under `accelerate launch -m linedraw convert ...` every process takes
its share of the (sorted) file list, so each output is written exactly once.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

FORMATS = {"png": ("PNG", ".png", {}), "jpg": ("JPEG", ".jpg", {"quality": 95}), "webp": ("WEBP", ".webp", {"quality": 95})}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw convert`."""
    parser = subparsers.add_parser(
        "convert",
        help="turn photos into line drawings",
        description="Turn photos (files, directories, globs) into line drawings, keeping the folder structure.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories (recursive) or globs")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="where the drawings go")
    parser.add_argument(
        "--checkpoint", default="contour", metavar="NAME|PATH",
        help="shipped checkpoint name (`linedraw models` lists them), a .safetensors file or a training "
        "output directory (default: contour)",
    )
    parser.add_argument("--size", type=int, default=None, metavar="N",
                        help="short side to process at, keeping the aspect ratio; 0 = native (default: the size the "
                        "checkpoint recommends in its JSON `inference.size`, else 512)")
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N",
                        help="largest image run in one piece at the processing size; larger ones are run in "
                        "overlapping, seamlessly blended tiles (default: 4194304 = 2048x2048; 1048576 through ONNX Runtime)")
    parser.add_argument("--tile-overlap", type=int, default=None, metavar="PX", help="tile overlap (default: 128)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="photos per forward pass (default: 4 on a GPU, 1 on the CPU)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    parser.add_argument("--half", action="store_true", help="float16 inference (CUDA only)")
    parser.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
                        help="inference engine (default auto: ONNX Runtime on CPU where the checkpoint recommends it "
                             "and onnxruntime is installed, e.g. contour-fast; else PyTorch)")
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                        help="channels-last memory format (default auto: on CUDA, and where the checkpoint "
                             "recommends it, e.g. contour-fast on CPU)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads decoding (and as many saving) images; 0 = main thread (default: 2 on a GPU; on "
                        "the CPU, the cores torch's own threads leave free)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="png", help="output format (default: png)")
    parser.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist (resume)")
    parser.add_argument("--invert", action="store_true", help="white lines on black (as ControlNet expects)")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="binarise: values >= T (in [0, 1]) become white, the rest black")
    parser.add_argument("--line-weight", type=int, default=0, metavar="N",
                        help="thicken (N > 0) or thin (N < 0) the dark lines by |N| pixels")
    parser.add_argument("--max-input-pixels", type=int, default=None, metavar="N",
                        help="refuse to decode larger images, guarding against decompression bombs "
                        "(default: 134217728)")
    parser.add_argument("--errors", metavar="FILE", help="also write the failures as CSV (path,reason)")
    parser.set_defaults(func=run)


@dataclass
class Task:
    """One photo to convert and where its drawing goes."""

    source: Path
    target: Path


def plan(inputs: Iterable[str], outdir: Path, suffix: str) -> list[Task]:
    """Input files -> tasks; outputs keep the relative folders. Photos that would share an output name
    (`a.jpg` and `a.png` in one folder) keep their extension in it (`a_jpg.png`, `a_png.png`)."""
    from linedraw.images import list_images

    found = list_images(inputs)
    targets = [relative.with_suffix(suffix) for _, relative in found]
    counts = Counter(targets)
    tasks = []
    for (source, relative), target in zip(found, targets):
        if counts[target] > 1:
            target = relative.with_name(f"{relative.stem}_{relative.suffix.lstrip('.')}{suffix}")
        tasks.append(Task(source, outdir / target))
    return tasks


def run(args: argparse.Namespace) -> int:
    """Handler of `linedraw convert`; returns 0 when every photo converted (or was skipped), 1 otherwise."""
    from tqdm import tqdm

    from linedraw.checkpoint import CheckpointError, load_generator
    from linedraw.convert import Converter
    from linedraw.images import DEFAULT_MAX_PIXELS, ImageError, display_path, open_image, save_image

    fmt, suffix, save_options = FORMATS[args.format]
    tasks = plan(args.inputs, Path(args.output), suffix)
    if not tasks:
        print(f"error: no images found in {', '.join(args.inputs)}", file=sys.stderr)
        return 2
    rank, world, device, show_progress = _process_share(args.device)
    tasks = tasks[rank::world]  # before --skip-existing, so every process agrees on the split
    prefix = f"[rank {rank}] " if world > 1 else ""

    failures: list[tuple[str, str]] = []
    skipped = 0
    todo = []
    for task in tasks:
        if _same_file(task.source, task.target):
            reason = "output would overwrite the input; choose another -o"
            failures.append((display_path(task.source), reason))
            print(f"{prefix}failed: {display_path(task.source)}: {reason}", file=sys.stderr)
        elif args.skip_existing and task.target.exists():
            skipped += 1
        else:
            todo.append(task)

    _cpu_defaults(args, device)
    try:
        model, config = load_generator(args.checkpoint)
        options = {k: getattr(args, k) for k in ("size", "max_pixels", "tile_overlap") if getattr(args, k) is not None}
        converter = Converter(
            model, config, device=device, half=args.half, batch_size=args.batch_size, invert=args.invert,
            threshold=args.threshold, line_weight=args.line_weight,
            channels_last={"auto": None, "on": True, "off": False}[args.channels_last], backend=args.backend,
            **options,
        )
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    max_input = args.max_input_pixels or DEFAULT_MAX_PIXELS
    bar = tqdm(total=len(todo), unit="img", disable=None if show_progress else True, dynamic_ncols=True)

    def fail(task: Task, reason: str) -> None:
        failures.append((display_path(task.source), reason))
        tqdm.write(f"{prefix}failed: {display_path(task.source)}: {reason}", file=sys.stderr)
        bar.update(1)

    def decode(task: Task):
        from linedraw.convert import pil_to_uint8

        return pil_to_uint8(open_image(task.source, max_pixels=max_input))

    converted = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.workers)) as writers:
        pending: deque[tuple[Task, Future]] = deque()

        def collect(block_above: int) -> None:
            nonlocal converted
            while len(pending) > block_above:
                task, future = pending.popleft()
                try:
                    future.result()
                except Exception as exc:  # disk full, permission denied, ...
                    fail(task, f"cannot write {display_path(task.target)}: {exc}")
                else:
                    converted += 1
                    bar.update(1)

        for chunk in _chunks(_prefetch(decode, todo, args.workers), args.batch_size):
            good = []
            for task, result in chunk:
                if isinstance(result, ImageError):
                    fail(task, result.reason)
                elif isinstance(result, Exception):
                    fail(task, f"cannot read: {result}")
                else:
                    good.append((task, result))
            for task, drawing in _convert_chunk(converter, good, fail):
                pending.append((task, writers.submit(save_image, drawing, task.target, fmt, **save_options)))
            collect(block_above=4 * args.batch_size)
        collect(block_above=0)
    bar.close()

    elapsed = time.perf_counter() - start
    rate = converted / elapsed if elapsed > 0 else 0.0
    print(f"{prefix}converted {converted}, skipped {skipped}, failed {len(failures)} "
          f"in {elapsed:.1f} s ({rate:.2f} images/s)")
    if args.errors:
        _write_errors(args.errors, failures, rank if world > 1 else None)
    return 0 if not failures else 1


def _convert_chunk(converter, good: list, fail: Callable[[object, str], None]) -> Iterator:
    """Convert a chunk together; if the batch fails (e.g. out of memory), retry each photo on its own."""
    if not good:
        return
    try:
        drawings = converter.convert([photo for _, photo in good])
    except Exception as exc:
        if len(good) == 1:
            fail(good[0][0], f"conversion failed: {exc}")
            return
        for item in good:
            yield from _convert_chunk(converter, [item], fail)
        return
    yield from zip((task for task, _ in good), drawings)


def _cpu_defaults(args: argparse.Namespace, device: str) -> None:
    """Fill unset --batch-size/--workers: on the CPU, batching and I/O threads only steal cores from torch's
    intra-op threads (bench/convert.py measured 0.76x the plain loop with batch 2 + 2 threads on 2 cores)."""
    import torch

    on_cpu = str(device) == "cpu" or (str(device) == "auto" and not torch.cuda.is_available()
                                      and not torch.backends.mps.is_available())
    if args.batch_size is None:
        args.batch_size = 1 if on_cpu else 4
    if args.workers is None:
        args.workers = max(0, (os.cpu_count() or 1) - torch.get_num_threads()) if on_cpu else 2


def _prefetch(fn: Callable, items: list, workers: int) -> Iterator[tuple[object, object]]:
    """Yield `(item, fn(item) or the exception it raised)` in order, running up to `workers` calls ahead."""
    if workers <= 0:
        for item in items:
            yield item, _call(fn, item)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        iterator = iter(items)
        for item in iterator:
            pending.append((item, pool.submit(_call, fn, item)))
            if len(pending) >= 4 * workers:
                break
        while pending:
            item, future = pending.popleft()
            following = next(iterator, None)
            if following is not None:
                pending.append((following, pool.submit(_call, fn, following)))
            yield item, future.result()


def _call(fn: Callable, item):
    try:
        return fn(item)
    except Exception as exc:
        return exc


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _process_share(device: str) -> tuple[int, int, str, bool]:
    """(rank, world size, device, show progress) from the variables `accelerate launch` / torchrun set.

    Converting needs no communication between processes, so no process group is started: each process
    takes every WORLD_SIZE-th file from RANK on, and "auto" becomes its local GPU (LOCAL_RANK) when CUDA is
    there. Only each machine's first process shows a progress bar.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device, True
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{local_rank % torch.cuda.device_count()}"
    return rank, world, device, local_rank == 0


def _same_file(source: Path, target: Path) -> bool:
    try:
        return target.exists() and os.path.samefile(source, target)
    except OSError:
        return False


def _write_errors(path: str, failures: list[tuple[str, str]], rank: int | None) -> None:
    """Failures as CSV (`path,reason`); under several processes each writes `<stem>.rank<N><suffix>`."""
    from linedraw.images import write_atomic

    target = Path(path)
    if rank is not None:
        target = target.with_name(f"{target.stem}.rank{rank}{target.suffix}")
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path", "reason"])
    writer.writerows(failures)
    write_atomic(target, lambda handle: handle.write(text.getvalue().encode("utf-8")))
