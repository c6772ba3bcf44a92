"""`linedraw convert INPUT... -o OUTDIR`: photos to line drawings, one photo or a million.

A thin wrapper over `linedraw.pipeline` (argument parsing and printing): inputs are files, directories
(recursive) and globs; outputs mirror the input tree as `<stem>.png` (or `--format`), one distinct output
per photo as `OUTPUT_NAMES` (the end of `--help`) says. Bad files are reported one line each (and in
`--errors FILE` as CSV) and never stop the batch; the exit code is 0 only when nothing failed (130 after
Ctrl-C, with the summary so far). Under `accelerate launch -m linedraw convert ...` every process takes its
share of the (sorted) file list, so each output is written exactly once.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from linedraw.commands.options import WarnOnDeprecated, add_device, add_engine, add_output, add_quiet
from linedraw.pipeline import FORMATS

OUTPUT_NAMES = """\
output names: OUTDIR mirrors each INPUT's tree (photos/a/b.jpg -> OUTDIR/a/b.png). Photos with one stem in one
folder are told apart by a fixed extension order (jpg, jpeg, jpe, jfif, png, webp, tif, tiff, bmp, gif, then
the rest): the first keeps b.png, the others get b.<ext>.png (b.png.png), so adding b.png beside b.jpg renames
nothing already written (adding b.jpg beside b.png does: rerun that folder without --skip-existing). When
the outputs of different INPUTs would land on one path (dA/x.jpg and dB/x.jpg), each of those INPUTs writes
under OUTDIR/<its folder's name>/ (OUTDIR/dA/x.png, OUTDIR/dB/x.png); if even that collides, nothing is
converted and the error says which files. Earlier drawings inside an INPUT folder (-o photos/drawings with
INPUT photos/) are never taken for photos; OUTDIR equal to an INPUT folder is refused. Videos (clip.mp4) are
converted frame by frame into a video of the same name, frame rate and size (H.264 in .mp4).

line art: --thin reduces every stroke to its 1-px centre line; --stroke-width PX redraws those centre lines
with a pen PX pixels wide in the written image, whatever --size the network ran at; --format svg writes them as
SVG paths (plain <path> elements, the pen as stroke-width) for plotters, cutters and editors."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw convert`."""
    parser = subparsers.add_parser(
        "convert",
        help="turn photos into line drawings",
        description="Turn photos (files, directories, globs) into line drawings, keeping the folder structure.",
        epilog=OUTPUT_NAMES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image or video files, directories (recursive) or globs")
    add_output(parser, "where the drawings go", metavar="OUTDIR")
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
    parser.add_argument("--tile-above-pixels", "--max-pixels", type=int, default=None, metavar="N",
                        action=WarnOnDeprecated, deprecated=("--max-pixels",),
                        help="run images over N pixels at the processing size in overlapping, seamlessly blended "
                        "tiles, bounding memory (default: 4194304 = 2048x2048; 1048576 through ONNX Runtime)")
    parser.add_argument("--tile-overlap", type=int, default=None, metavar="PX", help="tile overlap (default: 128)")
    parser.add_argument("--refuse-above-pixels", "--max-input-pixels", type=int, default=None, metavar="N",
                        action=WarnOnDeprecated, deprecated=("--max-input-pixels",),
                        help="refuse images over N pixels, when decoding (a decompression bomb guard; above "
                        "Pillow's own limit for trusted files) and at the processing or output size "
                        "(default: 134217728)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="photos per forward pass (default: 4 on a GPU, 1 on the CPU)")
    add_device(parser)
    parser.add_argument("--half", action="store_true", help="float16 inference (CUDA only)")
    parser.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
                        help="inference engine (default auto: ONNX Runtime on CPU where the checkpoint recommends it "
                             "and onnxruntime is installed, e.g. contour-fast; else PyTorch)")
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                        help="channels-last memory format (default auto: on CUDA, and where the checkpoint "
                             "recommends it, e.g. contour-fast on CPU)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads decoding (and as many saving) images; 0 = main thread (default: 2 on a GPU; on "
                        "the CPU, the cores torch's own threads leave free; --engine ray: per worker, none on a CPU)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="png",
                        help="output format of photos (default: png; png and jpg are grey-scale, webp has no "
                        "grey-scale mode and stores three equal channels; svg: centre-line paths)")
    parser.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist (resume)")
    parser.add_argument("--invert", action="store_true", help="white lines on black (as ControlNet expects)")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="binarise: values >= T (in [0, 1]) become white, the rest black")
    parser.add_argument("--line-weight", type=int, default=0, metavar="N",
                        help="thicken (N > 0) or thin (N < 0) the dark lines by |N| pixels, |N| <= 32")
    parser.add_argument("--thin", action="store_true", help="crisp 1-px centre lines (see below)")
    parser.add_argument("--min-stroke", type=int, default=0, metavar="PX",
                        help="drop strokes shorter than PX pixels at the processing size (specks; default: 0)")
    parser.add_argument("--stroke-width", type=float, default=None, metavar="PX",
                        help="redraw the centre lines with a pen PX output pixels wide (implies --thin)")
    parser.add_argument("--svg-tolerance", type=float, default=1.0, metavar="PX",
                        help="--format svg: simplify paths to within PX output pixels (default: 1)")
    parser.add_argument("--temporal", type=float, default=0.0, metavar="T",
                        help="videos: smooth the drawing over frames, T in [0, 1) (0 = off, the default; 0.5 "
                             "already removes most flicker)")
    parser.add_argument("--errors", metavar="FILE", help="also write the failures as CSV (path,reason)")
    add_engine(parser)
    add_quiet(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `linedraw convert`; returns 0 when every photo converted (or was skipped), 1 when some failed,
    130 when interrupted (after printing the summary so far)."""
    from tqdm import tqdm

    from linedraw.convert import resolve_device
    from linedraw.errors import UsageError
    from linedraw.images import DEFAULT_MAX_PIXELS, ImageTooLargeError, check_writable, display_path
    from linedraw.pipeline import ConversionInterrupted, convert_files, failure_reason, plan_outputs

    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be >= 0 (0 = decode and save in the main thread), got {args.workers}")
    if args.format == "svg" and (args.invert or args.line_weight):
        raise UsageError(f"--format svg cannot be combined with {'--invert' if args.invert else '--line-weight'}: "
                         "SVG strokes are black paths (use --stroke-width for the pen)")
    rank, world, show_progress = _process_share()
    if args.engine == "ray" and world > 1:
        raise UsageError("--engine ray starts its own workers: run it once, not under accelerate launch")
    if args.engine == "ray":
        from linedraw.engines.ray import require_ray

        require_ray()  # before any planning: a missing extra is one line
    device = resolve_device(args.device) if args.engine == "local" else None
    errors_path = _errors_path(args.errors, rank if world > 1 else None) if args.errors else None
    if errors_path is not None:
        check_writable(errors_path)  # before loading anything: a typo in --errors must not cost a whole run
    tasks = plan_outputs(args.inputs, args.output, args.format)
    if not tasks:
        raise UsageError(f"no images found in {', '.join(args.inputs)}")
    prefix = f"[rank {rank}] " if world > 1 else ""

    options = {"size": args.size, "max_pixels": args.tile_above_pixels, "tile_overlap": args.tile_overlap}
    settings = dict(
        batch_size=args.batch_size, half=args.half, invert=args.invert, threshold=args.threshold,
        line_weight=args.line_weight, output_size=args.output_size,
        refuse_above_pixels=DEFAULT_MAX_PIXELS if args.refuse_above_pixels is None else args.refuse_above_pixels,
        channels_last={"auto": None, "on": True, "off": False}[args.channels_last], backend=args.backend,
        thin=args.thin, min_stroke=args.min_stroke, stroke_width=args.stroke_width, svg_tolerance=args.svg_tolerance,
        **{k: v for k, v in options.items() if v is not None},
    )
    checkpoint = args.checkpoint
    if args.engine == "ray":
        from linedraw.engines.ray import portable_checkpoint

        checkpoint = portable_checkpoint(checkpoint)
    make_converter = functools.partial(_make_converter, checkpoint, settings)

    def explain(error: Exception) -> str:
        if isinstance(error, ImageTooLargeError):
            return (f"{error.what}, over the limit of {error.limit} pixels (a possible decompression bomb: "
                    "raise --refuse-above-pixels for trusted files)")
        return failure_reason(error)

    def on_error(task, reason: str) -> None:
        tqdm.write(f"{prefix}failed: {display_path(task.source)}: {reason}", file=sys.stderr)

    def on_warning(line: str) -> None:
        tqdm.write(f"{prefix}warning: {line}", file=sys.stderr)

    try:
        if args.engine == "ray":
            from linedraw.engines.ray import convert_files_ray

            summary = convert_files_ray(
                make_converter, tasks, device=args.device, workers=args.workers, format=args.format,
                skip_existing=args.skip_existing, errors=errors_path, explain=explain, temporal=args.temporal,
                progress=show_progress and not args.quiet, on_error=on_error, on_warning=on_warning,
            )
        else:
            summary = convert_files(
                make_converter(device), tasks, format=args.format, workers=args.workers,
                skip_existing=args.skip_existing, shard=(rank, world), errors=errors_path, explain=explain,
                progress=show_progress and not args.quiet, temporal=args.temporal, on_error=on_error,
                on_warning=on_warning,
            )
    except ConversionInterrupted as stop:
        _print_summary(stop.summary, prefix)
        print(f"{prefix}interrupted: {stop.summary.left} photo(s) not converted (rerun with --skip-existing to "
              "resume)", file=sys.stderr)
        return 130
    _print_summary(summary, prefix)
    return 0 if not summary.failures else 1


def _make_converter(checkpoint: str, settings: dict, device):
    """The Converter `run` converts with, on `device`; module-level so the ray engine's workers can build it."""
    from linedraw.checkpoint import load_generator
    from linedraw.convert import Converter

    if settings["batch_size"] is None:  # on the CPU, batching only steals cores from torch's intra-op threads
        settings = {**settings, "batch_size": 1 if device.type == "cpu" else 4}
    model, config = load_generator(checkpoint)
    return Converter(model, config, device=device, **settings)


def _print_summary(summary, prefix: str) -> None:
    print(f"{prefix}converted {summary.converted}, skipped {summary.skipped}, failed {summary.failed} "
          f"in {summary.elapsed:.1f} s ({summary.rate:.2f} images/s)")


def _process_share() -> tuple[int, int, bool]:
    """(rank, world size, show progress) from the variables `accelerate launch` / torchrun set.

    Converting needs no communication between processes, so no process group is started: each process
    takes every WORLD_SIZE-th file from RANK on, and `resolve_device("auto")` gives its local GPU (LOCAL_RANK).
    Only each machine's first process shows a progress bar.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, True
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local_rank == 0


def _errors_path(path: str, rank: int | None) -> Path:
    """Where the failures CSV goes; under several processes each writes `<stem>.rank<N><suffix>`."""
    target = Path(path)
    if rank is not None:
        target = target.with_name(f"{target.stem}.rank{rank}{target.suffix}")
    return target
