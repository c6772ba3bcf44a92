"""Convert many photo files to drawing files, robustly: the loop behind `linedraw convert`, for Python users too.

    from linedraw import load
    from linedraw.pipeline import convert_files, plan_outputs

    converter = load("contour")
    tasks = plan_outputs(["photos/"], "drawings/")           # one distinct output per photo
    summary = convert_files(converter, tasks, skip_existing=True, errors="failed.csv")
    print(summary.converted, summary.failed)

Decoding runs `workers` threads ahead and saving runs in as many threads, so the device stays busy; a batch
that fails (out of memory, say) is retried one photo at a time; a bad file is one failure (with a one-line
reason) and never stops the rest; every write is atomic, and temp files a killed run left in the output
folders are removed. Ctrl-C stops cleanly: drawings already made are saved, then `ConversionInterrupted`
(a KeyboardInterrupt) carries the summary so far.
"""
from __future__ import annotations

import csv
import functools
import io
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from linedraw.errors import UsageError

if TYPE_CHECKING:  # the heavy imports (torch, Pillow) wait until work starts, so `linedraw --help` stays fast
    from linedraw.images import PathLike

#: Output formats: name -> (Pillow format, file suffix, save options). WebP has no grey-scale mode: drawings are
#: stored as three equal channels (PNG and JPEG stay one-channel). "svg" writes centre-line paths
#: (`Converter.to_svg`). Videos are written as videos whatever the format (see `plan_outputs`).
FORMATS = {"png": ("PNG", ".png", {}), "jpg": ("JPEG", ".jpg", {"quality": 95}),
           "webp": ("WEBP", ".webp", {"quality": 95}), "svg": (None, ".svg", {})}

#: Of several photos with one stem in one folder, the first extension here keeps the plain `<stem>.<format>`
#: output name; the others (and extensions not listed, in alphabetical order) get `<stem>.<ext>.<format>`.
EXTENSION_PRIORITY = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")


@dataclass
class Task:
    """One photo to convert and where its drawing goes."""

    source: Path
    target: Path


@dataclass
class Summary:
    """What `convert_files` did: counts, `(path, reason)` failures, and the time it took."""

    converted: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    elapsed: float = 0.0
    #: Photos neither converted, skipped nor failed (non-zero only after an interruption).
    left: int = 0

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def rate(self) -> float:
        """Converted photos per second."""
        return self.converted / self.elapsed if self.elapsed > 0 else 0.0


class ConversionInterrupted(KeyboardInterrupt):
    """Ctrl-C during `convert_files`, after the drawings already made were saved; `summary` says how far it got."""

    def __init__(self, summary: Summary) -> None:
        super().__init__(f"interrupted after {summary.converted} converted")
        self.summary = summary


# -------------------------------------------------------------------------------------------------- planning


def plan_outputs(inputs: Iterable[PathLike], outdir: PathLike, format: str = "png") -> list[Task]:
    """Files, directories (recursive) and globs -> one task per photo, each with its own output path.

    Outputs mirror each input's tree (`photos/a/b.jpg` -> `outdir/a/b.png`); a video keeps its name
    (`clip.mp4` -> `outdir/clip.mp4`; containers linedraw cannot write become `.mp4`). Same-stem photos of one folder
    are told apart by `EXTENSION_PRIORITY` (the first keeps `b.png`, the others get `b.<ext>.png`), so adding
    `b.png` beside `b.jpg` renames nothing already written. Inputs from more than one folder (a walked folder or
    glob's base, a file's own folder) each write under `outdir/<that folder's name>/`, decided by the inputs
    alone, so adding photos never moves earlier outputs. Files inside `outdir` found by walking a folder that
    holds it are an earlier run's drawings and are left out. Raises `UsageError` when `outdir` is an input
    folder, when two input folders share a name, or when two photos would still share an output.
    """
    from linedraw.images import IMAGE_EXTENSIONS, display_path, list_images
    from linedraw.video import OUTPUT_FORMATS, VIDEO_EXTENSIONS, is_video

    if format not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(sorted(FORMATS))}, got {format!r}")
    suffix = FORMATS[format][1]
    inputs = [os.fspath(item) for item in inputs]
    outdir = Path(outdir)
    out_real = os.path.realpath(outdir)
    seen: set[str] = set()
    per_input: list[list[tuple[Path, Path]]] = []
    for item in inputs:
        root = _walk_root(item)
        if root is not None and os.path.realpath(root) == out_real:
            raise UsageError(
                f"outdir {display_path(outdir)} is the input folder {display_path(item)}: the drawings would be "
                "mixed with the photos (and taken for photos by the next run); choose another output folder"
            )
        # Walking a folder that holds outdir finds an earlier run's drawings there: they are not photos.
        holds_outdir = root is not None and _is_inside(out_real, os.path.realpath(root))
        found = []
        for source, relative in list_images([item], IMAGE_EXTENSIONS | VIDEO_EXTENSIONS):
            key = os.path.normcase(os.path.abspath(source))
            if key in seen:
                continue
            seen.add(key)
            if holds_outdir and _is_inside(os.path.realpath(source), out_real):
                continue
            found.append((source, relative))
        per_input.append(found)

    # Same-stem photos of one real folder: a fixed extension order picks the one keeping the plain name.
    def output_name(source: Path, relative: Path) -> Path:
        if is_video(source):
            return relative if relative.suffix.lower() in OUTPUT_FORMATS else relative.with_suffix(".mp4")
        return relative.with_suffix(suffix)

    names: list[list[Path]] = [[output_name(*pair) for pair in found] for found in per_input]
    siblings: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for i, found in enumerate(per_input):
        for j, (source, _) in enumerate(found):
            if is_video(source):
                continue
            folder = os.path.normcase(os.path.realpath(source.parent))
            siblings.setdefault((folder, source.stem), []).append((i, j))
    for group in siblings.values():
        ranked = sorted(group, key=lambda ij: _extension_rank(per_input[ij[0]][ij[1]][0]))
        for i, j in ranked[1:]:
            relative = per_input[i][j][1]
            names[i][j] = relative.with_name(relative.name + suffix)

    # Inputs from several folders write under outdir/<their folder's name>/, whatever files they hold, so that
    # adding a photo never moves earlier outputs (and --skip-existing never keeps another photo's drawing).
    folders = {os.path.normcase(os.path.realpath(_input_folder(item))): _input_folder(item) for item in inputs}
    nest = len(folders) > 1
    if nest:
        by_name: dict[str, Path] = {}
        for folder in folders.values():
            other = by_name.setdefault(Path(os.path.abspath(folder)).name or "root", folder)
            if other != folder:
                raise UsageError(
                    f"the input folders {display_path(other)} and {display_path(folder)} share the name "
                    f"{Path(os.path.abspath(folder)).name!r}, under which each writes in outdir; convert them in "
                    "separate runs"
                )

    def relative_target(i: int, j: int) -> Path:
        return Path(_input_name(inputs[i])) / names[i][j] if nest else names[i][j]

    owners: dict[str, tuple[int, int]] = {}
    for i, targets in enumerate(names):
        for j in range(len(targets)):
            k, m = owners.setdefault(os.path.normcase(str(relative_target(i, j))), (i, j))
            if (k, m) != (i, j):
                raise UsageError(
                    f"{display_path(per_input[k][m][0])} and {display_path(per_input[i][j][0])} would both be "
                    f"written to {display_path(outdir / relative_target(i, j))}; convert them in separate runs, "
                    "or rename one"
                )
    return [Task(source, outdir / relative_target(i, j))
            for i, found in enumerate(per_input) for j, (source, _) in enumerate(found)]


def _walk_root(item: str) -> Path | None:
    """The folder an input is walked from (a directory, or a glob's fixed prefix); None for a file."""
    from linedraw.images import _glob_base, _has_magic

    path = Path(item)
    if path.is_dir():
        return path
    if not path.exists() and _has_magic(item):
        return _glob_base(item)
    return None


def _input_folder(item: str) -> Path:
    """The folder an input is walked from, or a file's own folder."""
    root = _walk_root(item)
    return root if root is not None else Path(item).parent


def _input_name(item: str) -> str:
    """The folder name an input's outputs go under when the inputs come from several folders."""
    return Path(os.path.abspath(_input_folder(item))).name or "root"


def _extension_rank(source: Path) -> tuple[int, str, str]:
    extension = source.suffix.lower()
    rank = EXTENSION_PRIORITY.index(extension) if extension in EXTENSION_PRIORITY else len(EXTENSION_PRIORITY)
    return rank, extension, source.name


def _is_inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


# -------------------------------------------------------------------------------------------------- converting


def failure_reason(error: Exception) -> str:
    """The one-line reason `convert_files` reports for a photo that could not be read or converted."""
    from linedraw.errors import LinedrawError
    from linedraw.images import ImageError, ImageTooLargeError

    if isinstance(error, ImageTooLargeError):
        return (f"{error.what}, over the limit of {error.limit} pixels (refuse_above_pixels; a possible "
                "decompression bomb: raise the limit only for trusted files)")
    if isinstance(error, ImageError):
        return error.reason
    if isinstance(error, LinedrawError):  # a photo size the settings refuse, ...: the message says it all
        return str(error)
    return f"cannot read: {error}"


def default_workers(device) -> int:
    """Decoding (and saving) threads: 2 beside a GPU; on the CPU only the cores torch's own threads leave free,
    since I/O threads there steal cores from the forward pass."""
    import torch

    if str(device) == "cpu" or getattr(device, "type", None) == "cpu":
        return max(0, (os.cpu_count() or 1) - torch.get_num_threads())
    return 2


def convert_files(
    converter,
    tasks: Sequence[Task],
    *,
    format: str = "png",
    workers: int | None = None,
    skip_existing: bool = False,
    shard: tuple[int, int] = (0, 1),
    errors: PathLike | None = None,
    on_error: Callable[[Task, str], object] | None = None,
    on_warning: Callable[[str], object] | None = None,
    explain: Callable[[Exception], str] = failure_reason,
    progress: bool = False,
    temporal: float = 0.0,
    clean_stale: bool = True,
) -> Summary:
    """Convert every task's photo with `converter` (a `linedraw.Converter`) and save it to the task's target.

    `shard=(index, count)` takes every count-th task from index on (before `skip_existing`, so processes
    agree on the split); `skip_existing` leaves targets that exist (resume). A failed photo is reported to
    `on_error(task, reason)` and in the summary, and (with `errors`, checked writable before any work) in a
    `path,reason` CSV; `on_warning(line)` hears about multi-frame files. `explain(error)` words the reason for
    read errors (the CLI names its own flags). `workers` decode and as many save (None: `default_workers`,
    0: in this thread). Videos are converted after the photos, frame by frame in batches, their network output
    smoothed over time by `temporal` (`linedraw.video`). Ctrl-C raises `ConversionInterrupted` once the
    drawings already made are saved. `clean_stale=False` leaves the removal of temp files killed runs left in
    the output folders to the caller (an engine that calls this per batch does it once, up front).
    """
    from tqdm import tqdm

    from linedraw.images import check_writable, display_path, open_image, save_image, write_text_atomic
    from linedraw.video import is_video

    if format not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(sorted(FORMATS))}, got {format!r}")
    if not (isinstance(temporal, (int, float)) and 0.0 <= temporal < 1.0):
        raise UsageError(f"temporal must be in [0, 1) (0 = no smoothing), got {temporal!r}")
    if workers is None:
        workers = default_workers(converter.device)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f"workers must be an integer >= 0 (0 = decode and save in this thread), got {workers!r}")
    index, count = shard
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise UsageError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    if errors is not None:
        check_writable(errors)  # before any work: a typo must not cost a whole run
    pil_format, _, save_options = FORMATS[format]
    if format == "svg":
        from linedraw.vector import check_svg_options

        check_svg_options(invert=converter.invert, line_weight=converter.line_weight)
        converter.line_thresholds()  # a threshold centre lines cannot use is refused here, before any work
        render, save = converter.to_svg, write_text_atomic
    else:
        render = converter.convert

        def save(path, drawing) -> None:
            save_image(drawing, path, pil_format, **save_options)
    summary = Summary()

    def fail(task: Task, reason: str) -> None:
        summary.failures.append((display_path(task.source), reason))
        if on_error is not None:
            on_error(task, reason)

    tasks = list(tasks)
    # Inputs that sit where an output would be written (photos/* -o photos): a target there would replace them.
    # Folders are resolved once each, and only sources in an output folder are kept, so big runs stay cheap.
    real_folder = functools.lru_cache(maxsize=None)(_real)
    out_folders = {real_folder(task.target.parent) for task in tasks}
    sources = {(folder, os.path.normcase(task.source.name)): task.source for task in tasks
               if (folder := real_folder(task.source.parent)) in out_folders}
    todo, videos = [], []
    for task in tasks[index::count]:
        overwritten = sources.get((real_folder(task.target.parent), os.path.normcase(task.target.name)))
        if overwritten is not None or _same_file(task.source, task.target):
            other = "" if overwritten in (None, task.source) else f" {display_path(overwritten)}"
            fail(task, f"output would overwrite the input{other}; choose another output folder")
        elif skip_existing and task.target.exists():
            summary.skipped += 1
        else:
            (videos if is_video(task.source) else todo).append(task)
    if clean_stale:
        remove_stale_outputs(todo + videos, on_warning)

    bar = tqdm(total=len(todo), unit="img", disable=None if progress else True, dynamic_ncols=True)
    failed_before = summary.failed

    def decode(task: Task):
        from linedraw.convert import pil_to_uint8

        image = open_image(task.source, max_pixels=converter.refuse_above_pixels, warn=on_warning)
        converter.check_photo(image.height, image.width)  # refused here, before it costs a forward pass
        return pil_to_uint8(image)

    def fail_one(task: Task, reason: str) -> None:
        fail(task, reason)
        bar.update(1)

    start = time.perf_counter()
    interrupted = False
    with ThreadPoolExecutor(max(1, workers)) as writers:
        pending: deque[tuple[Task, Future]] = deque()

        def collect(block_above: int) -> None:
            while len(pending) > block_above:
                task, future = pending[0]
                try:
                    future.result()
                except Exception as exc:  # disk full, permission denied, ...
                    fail_one(task, f"cannot write {display_path(task.target)}: {exc}")
                else:
                    summary.converted += 1
                    bar.update(1)
                pending.popleft()

        decoded = _prefetch(decode, todo, workers)
        try:
            for chunk in _chunks(decoded, converter.batch_size):
                good = []
                for task, result in chunk:
                    if isinstance(result, Exception):
                        fail_one(task, explain(result))
                    else:
                        good.append((task, result))
                for task, drawing in _convert_chunk(render, good, fail_one):
                    pending.append((task, writers.submit(save, task.target, drawing)))
                collect(block_above=4 * converter.batch_size)
            bar.close()
            for task in videos:
                if _convert_video(converter, task, temporal, progress, fail, explain):
                    summary.converted += 1
        except KeyboardInterrupt:
            interrupted = True
        finally:
            decoded.close()  # stops decoding ahead; the drawings already handed to the writers are still saved
            collect(block_above=0)
    bar.close()
    summary.elapsed = time.perf_counter() - start
    summary.left = len(todo) + len(videos) - summary.converted - (summary.failed - failed_before)
    if errors is not None:
        write_errors_csv(errors, summary.failures)
    if interrupted:
        raise ConversionInterrupted(summary)
    return summary


def remove_stale_outputs(tasks: Iterable[Task], on_warning: Callable[[str], object] | None = None) -> None:
    """Remove the temp files interrupted runs left in the tasks' output folders, telling `on_warning` of each."""
    from linedraw.images import display_path, remove_stale_temp_files

    for folder in sorted({task.target.parent for task in tasks}):
        for stale in remove_stale_temp_files(folder):
            if on_warning is not None:
                on_warning(f"removed {display_path(stale)}, a temp file left by an interrupted run")


def write_errors_csv(path: PathLike, failures: Iterable[tuple[str, str]]) -> None:
    """Failures as a `path,reason` CSV, written atomically."""
    from linedraw.images import write_atomic

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path", "reason"])
    writer.writerows(failures)
    write_atomic(path, lambda handle: handle.write(text.getvalue().encode("utf-8")))


def _convert_chunk(render: Callable, good: list, fail: Callable[[Task, str], None]) -> Iterator:
    """Convert a chunk together with `render` (photos -> outputs); if the batch fails (e.g. out of memory),
    retry each photo on its own."""
    if not good:
        return
    try:
        drawings = render([photo for _, photo in good])
    except Exception as exc:
        if len(good) == 1:
            fail(good[0][0], f"conversion failed: {exc}")
            return
        for item in good:
            yield from _convert_chunk(render, [item], fail)
        return
    yield from zip((task for task, _ in good), drawings)


def _convert_video(converter, task: Task, temporal: float, progress: bool, fail: Callable[[Task, str], None],
                   explain: Callable[[Exception], str]) -> bool:
    """One video through the converter's batches: the raw network output is smoothed, then finished per frame.
    Returns whether it was written; a video that cannot be converted is one failure and the batch goes on."""
    from linedraw.errors import LinedrawError
    from linedraw.images import ImageError
    from linedraw.video import convert_video

    try:
        convert_video(lambda frames: converter.convert_tensors(frames, raw=True), task.source, task.target,
                      temporal=temporal, batch_size=converter.batch_size, progress=progress,
                      finish=converter.finish)
    except ImageError as exc:  # VideoError: unreadable or unsupported
        fail(task, exc.reason)
    except LinedrawError as exc:  # a frame size the settings refuse, a missing file, ...
        fail(task, explain(exc))
    except Exception as exc:  # what a photo batch would retry: one failure, not the end of the batch
        fail(task, f"conversion failed: {exc}")
    else:
        return True
    return False


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


def _real(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def _same_file(source: Path, target: Path) -> bool:
    try:
        return target.exists() and os.path.samefile(source, target)
    except OSError:
        return False
