"""`linedraw convert INPUT... -o OUTDIR`: photos to line drawings, one photo or a million.

Inputs are files, directories (recursive) and globs; outputs mirror the input tree as `<stem>.png` (or
`--format`). Decoding runs in `--workers` threads and saving in another pool, so the device stays busy.
Bad files are reported one line each (and in `--errors FILE` as CSV) and never stop the batch; the exit
code is 0 only when nothing failed (130 after Ctrl-C, with the summary so far). Under
`accelerate launch -m linedraw convert ...` every process takes its share of the (sorted) file list, so
each output is written exactly once.

Every input gets its own output, by a fixed rule (so `--skip-existing` stays right across reruns); see
`OUTPUT_NAMES`, which is also the end of `linedraw convert --help`.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

FORMATS = {"png": ("PNG", ".png", {}), "jpg": ("JPEG", ".jpg", {"quality": 95}), "webp": ("WEBP", ".webp", {"quality": 95})}

#: Of several photos with one stem in one folder, the first extension here keeps the plain `<stem>.<format>`
#: output name; the others (and extensions not listed, in alphabetical order) get `<stem>.<ext>.<format>`.
EXTENSION_PRIORITY = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")

OUTPUT_NAMES = """\
output names: OUTDIR mirrors each INPUT's tree (photos/a/b.jpg -> OUTDIR/a/b.png). Photos with one stem in one
folder are told apart by a fixed extension order (jpg, jpeg, jpe, jfif, png, webp, tif, tiff, bmp, gif, then
the rest): the first keeps b.png, the others get b.<ext>.png (b.png.png), so adding b.png beside b.jpg renames
nothing already written. When the outputs of different INPUTs would land on one path (dA/x.jpg and dB/x.jpg),
each of those INPUTs writes under OUTDIR/<its folder's name>/ (OUTDIR/dA/x.png, OUTDIR/dB/x.png); if even that
collides, nothing is converted and the error says which files. Earlier drawings inside an INPUT folder (-o
photos/drawings with INPUT photos/) are never taken for photos; OUTDIR equal to an INPUT folder is refused."""


class _Renamed(argparse.Action):
    """An old flag spelling that still works for one release, with a one-line deprecation warning."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {option_string} is deprecated and will be removed; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw convert`."""
    parser = subparsers.add_parser(
        "convert",
        help="turn photos into line drawings",
        description="Turn photos (files, directories, globs) into line drawings, keeping the folder structure.",
        epilog=OUTPUT_NAMES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories (recursive) or globs")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="where the drawings go")
    parser.add_argument(
        "--checkpoint", default="contour", metavar="NAME|PATH",
        help="shipped checkpoint name (`linedraw models` lists them), a .safetensors file or a training "
        "output directory (default: contour)",
    )
    parser.add_argument("--size", type=int, default=None, metavar="N",
                        help="short side photos are processed at, keeping the aspect ratio; 0 = native. Not the size "
                        "written: drawings come back at the photo's own size (see --output-size). Default: the size "
                        "the checkpoint recommends in its JSON `inference.size`, else 512")
    parser.add_argument("--output-size", type=int, default=None, metavar="N",
                        help="short side of the written drawings (default: the photo's own size)")
    parser.add_argument("--tile-above-pixels", type=int, default=None, metavar="N",
                        help="run images over N pixels at the processing size in overlapping, seamlessly blended "
                        "tiles, bounding memory (default: 4194304 = 2048x2048; 1048576 through ONNX Runtime)")
    parser.add_argument("--max-pixels", type=int, dest="tile_above_pixels", action=_Renamed,
                        new="--tile-above-pixels", help=argparse.SUPPRESS)
    parser.add_argument("--tile-overlap", type=int, default=None, metavar="PX", help="tile overlap (default: 128)")
    parser.add_argument("--refuse-above-pixels", type=int, default=None, metavar="N",
                        help="refuse images over N pixels, when decoding (a decompression bomb guard; above "
                        "Pillow's own limit for trusted files) and at the processing or output size "
                        "(default: 134217728)")
    parser.add_argument("--max-input-pixels", type=int, dest="refuse_above_pixels", action=_Renamed,
                        new="--refuse-above-pixels", help=argparse.SUPPRESS)
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
    parser.add_argument("--format", choices=sorted(FORMATS), default="png",
                        help="output format (default: png; png and jpg are grey-scale, webp has no grey-scale mode "
                        "and stores three equal channels)")
    parser.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist (resume)")
    parser.add_argument("--invert", action="store_true", help="white lines on black (as ControlNet expects)")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="binarise: values >= T (in [0, 1]) become white, the rest black")
    parser.add_argument("--line-weight", type=int, default=0, metavar="N",
                        help="thicken (N > 0) or thin (N < 0) the dark lines by |N| pixels, |N| <= 32")
    parser.add_argument("--errors", metavar="FILE", help="also write the failures as CSV (path,reason)")
    parser.set_defaults(func=run)


@dataclass
class Task:
    """One photo to convert and where its drawing goes."""

    source: Path
    target: Path


def plan(inputs: Iterable[str], outdir: Path, suffix: str) -> list[Task]:
    """Input files -> tasks, one distinct output each, named as `OUTPUT_NAMES` says.

    Raises `UsageError` when OUTDIR is an input folder, or when two photos would still share an output.
    """
    from linedraw.errors import UsageError
    from linedraw.images import display_path, list_images

    inputs = [os.fspath(item) for item in inputs]
    out_real = os.path.realpath(outdir)
    seen: set[str] = set()
    per_input: list[list[tuple[Path, Path]]] = []
    for item in inputs:
        root = _walk_root(item)
        if root is not None and os.path.realpath(root) == out_real:
            raise UsageError(
                f"-o {display_path(outdir)} is the input folder {display_path(item)}: the drawings would be mixed "
                "with the photos (and taken for photos by the next run); choose another -o"
            )
        found = []
        for source, relative in list_images([item]):
            key = os.path.normcase(os.path.abspath(source))
            if key in seen:
                continue
            seen.add(key)
            if root is not None and _is_inside(os.path.realpath(source), out_real):
                continue  # a drawing of an earlier run into a folder inside this input
            found.append((source, relative))
        per_input.append(found)

    # Same-stem photos of one real folder: a fixed extension order picks the one keeping the plain name.
    names: list[list[Path]] = [[relative.with_suffix(suffix) for _, relative in found] for found in per_input]
    siblings: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for i, found in enumerate(per_input):
        for j, (source, _) in enumerate(found):
            folder = os.path.normcase(os.path.realpath(source.parent))
            siblings.setdefault((folder, source.stem), []).append((i, j))
    for group in siblings.values():
        if len(group) > 1:
            ranked = sorted(group, key=lambda ij: _extension_rank(per_input[ij[0]][ij[1]][0]))
            for i, j in ranked[1:]:
                relative = per_input[i][j][1]
                names[i][j] = relative.with_name(relative.name + suffix)

    # Outputs of different inputs landing on one path: those inputs write under OUTDIR/<their folder's name>/.
    nested: set[int] = set()
    while True:
        owners: dict[str, list[tuple[int, int]]] = {}
        for i, targets in enumerate(names):
            for j, target in enumerate(targets):
                path = Path(_input_name(inputs, i)) / target if i in nested else target
                owners.setdefault(os.path.normcase(str(path)), []).append((i, j))
        clashes = [group for group in owners.values() if len(group) > 1]
        newly = {i for group in clashes for i, _ in group if len({k for k, _ in group}) > 1} - nested
        if not newly:
            break
        nested |= newly
    if clashes:
        (i, j), (k, m) = clashes[0][:2]
        target = outdir / (Path(_input_name(inputs, i)) / names[i][j] if i in nested else names[i][j])
        raise UsageError(
            f"{display_path(per_input[i][j][0])} and {display_path(per_input[k][m][0])} would both be written to "
            f"{display_path(target)}; convert them in separate runs, or rename one"
        )
    return [
        Task(source, outdir / (Path(_input_name(inputs, i)) / names[i][j] if i in nested else names[i][j]))
        for i, found in enumerate(per_input)
        for j, (source, _) in enumerate(found)
    ]


def _walk_root(item: str) -> Path | None:
    """The folder an input is walked from (a directory, or a glob's fixed prefix); None for a file."""
    from linedraw.images import _glob_base, _has_magic

    path = Path(item)
    if path.is_dir():
        return path
    if not path.exists() and _has_magic(os.fspath(item)):
        return _glob_base(os.fspath(item))
    return None


def _input_name(inputs: list[str], index: int) -> str:
    """The folder name an input's outputs go under when they collide with another input's."""
    item = inputs[index]
    root = _walk_root(item)
    folder = root if root is not None else Path(item).parent
    return Path(os.path.abspath(folder)).name or "root"


def _extension_rank(source: Path) -> tuple[int, str, str]:
    extension = source.suffix.lower()
    rank = EXTENSION_PRIORITY.index(extension) if extension in EXTENSION_PRIORITY else len(EXTENSION_PRIORITY)
    return rank, extension, source.name


def _is_inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def run(args: argparse.Namespace) -> int:
    """Handler of `linedraw convert`; returns 0 when every photo converted (or was skipped), 1 when some failed,
    130 when interrupted (after printing the summary so far)."""
    from tqdm import tqdm

    from linedraw.checkpoint import load_generator
    from linedraw.convert import Converter, PhotoSizeError
    from linedraw.errors import UsageError
    from linedraw.images import (
        DEFAULT_MAX_PIXELS, ImageError, ImageTooLargeError, check_writable, display_path, open_image,
        remove_stale_temp_files, save_image,
    )

    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be >= 0 (0 = decode and save in the main thread), got {args.workers}")
    rank, world, device, show_progress = _process_share(args.device)
    errors_path = _errors_path(args.errors, rank if world > 1 else None) if args.errors else None
    if errors_path is not None:
        check_writable(errors_path)  # before any work: a typo in --errors must not cost a whole run
    fmt, suffix, save_options = FORMATS[args.format]
    tasks = plan(args.inputs, Path(args.output), suffix)
    if not tasks:
        raise UsageError(f"no images found in {', '.join(args.inputs)}")
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
    stale = [p for folder in sorted({t.target.parent for t in todo}) for p in remove_stale_temp_files(folder)]
    if stale:
        print(f"{prefix}removed {len(stale)} temp file(s) left by an interrupted run", file=sys.stderr)

    _cpu_defaults(args, device)
    model, config = load_generator(args.checkpoint)
    refuse_above = args.refuse_above_pixels or DEFAULT_MAX_PIXELS
    options = {"size": args.size, "max_pixels": args.tile_above_pixels, "tile_overlap": args.tile_overlap}
    converter = Converter(
        model, config, device=device, half=args.half, batch_size=args.batch_size, invert=args.invert,
        threshold=args.threshold, line_weight=args.line_weight, output_size=args.output_size,
        refuse_above_pixels=refuse_above,
        channels_last={"auto": None, "on": True, "off": False}[args.channels_last], backend=args.backend,
        **{k: v for k, v in options.items() if v is not None},
    )

    bar = tqdm(total=len(todo), unit="img", disable=None if show_progress else True, dynamic_ncols=True)

    def fail(task: Task, reason: str) -> None:
        failures.append((display_path(task.source), reason))
        tqdm.write(f"{prefix}failed: {display_path(task.source)}: {reason}", file=sys.stderr)
        bar.update(1)

    def warn(line: str) -> None:
        tqdm.write(f"{prefix}warning: {line}", file=sys.stderr)

    def decode(task: Task):
        from linedraw.convert import pil_to_uint8

        image = open_image(task.source, max_pixels=refuse_above, warn=warn)
        converter.check_photo(image.height, image.width)  # refused here, before it costs a forward pass
        return pil_to_uint8(image)

    def reason_of(error: Exception) -> str:
        if isinstance(error, ImageTooLargeError):
            return (f"{error.what}, over the limit of {error.limit} pixels (a possible decompression bomb: "
                    "raise --refuse-above-pixels for trusted files)")
        if isinstance(error, ImageError):
            return error.reason
        if isinstance(error, PhotoSizeError):
            return str(error)
        return f"cannot read: {error}"

    converted = 0
    failed_before = len(failures)
    interrupted = False
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

        decoded = _prefetch(decode, todo, args.workers)
        try:
            for chunk in _chunks(decoded, args.batch_size):
                good = []
                for task, result in chunk:
                    if isinstance(result, Exception):
                        fail(task, reason_of(result))
                    else:
                        good.append((task, result))
                for task, drawing in _convert_chunk(converter, good, fail):
                    pending.append((task, writers.submit(save_image, drawing, task.target, fmt, **save_options)))
                collect(block_above=4 * args.batch_size)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            decoded.close()  # stops decoding ahead; the drawings already handed to the writers are still saved
            collect(block_above=0)
    bar.close()

    elapsed = time.perf_counter() - start
    rate = converted / elapsed if elapsed > 0 else 0.0
    print(f"{prefix}converted {converted}, skipped {skipped}, failed {len(failures)} "
          f"in {elapsed:.1f} s ({rate:.2f} images/s)")
    if errors_path is not None:
        _write_errors(errors_path, failures)
    if interrupted:
        left = len(todo) - converted - (len(failures) - failed_before)
        print(f"{prefix}interrupted: {left} photo(s) not converted "
              "(rerun with --skip-existing to resume)", file=sys.stderr)
        return 130
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


def _errors_path(path: str, rank: int | None) -> Path:
    """Where the failures CSV goes; under several processes each writes `<stem>.rank<N><suffix>`."""
    target = Path(path)
    if rank is not None:
        target = target.with_name(f"{target.stem}.rank{rank}{target.suffix}")
    return target


def _write_errors(target: Path, failures: list[tuple[str, str]]) -> None:
    """Failures as CSV (`path,reason`)."""
    from linedraw.images import write_atomic

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path", "reason"])
    writer.writerows(failures)
    write_atomic(target, lambda handle: handle.write(text.getvalue().encode("utf-8")))
