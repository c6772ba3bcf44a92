"""`linedraw distill PHOTOS... -o OUT [--teacher contour]`: train a compact student to draw like a teacher."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from linedraw.errors import UsageError


def _student_spec(text: str) -> str | dict:
    """`--student`: a registered model name, JSON text, or the path of a JSON file; errors name the flag (and the
    file)."""
    from linedraw.models import list_models

    if text in list_models():
        return text
    source = "--student"
    if not text.lstrip().startswith("{") and not Path(text).is_file():
        raise UsageError(f"--student {text}: neither a registered model ({', '.join(list_models())}), a JSON "
                         "object nor a .json file")
    if not text.lstrip().startswith("{"):
        source = f"--student {text}"
        try:
            text = Path(text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"{source}: cannot be read ({err})") from None
    try:
        student = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{source}: not valid JSON ({err})") from None
    if not isinstance(student, dict) or "model" not in student:
        raise UsageError(f'{source}: must be a JSON object with a "model" key')
    return student


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw distill`."""
    from linedraw.commands.options import (add_device, add_output, add_quiet, non_negative_int, positive_float,
                                          positive_int)
    from linedraw.distill import DEFAULT_STUDENT, DistillConfig

    defaults = DistillConfig(photos=[], output_dir="")
    parser = subparsers.add_parser(
        "distill", help="train a fast student generator to reproduce a teacher checkpoint's drawings",
        description="Draw the photos with the teacher (cached under OUT/pairs/), then train a compact student on "
                    "random crops with line-weighted L1 + Sobel-gradient L1. Rerunning the same command resumes; Ctrl-C or "
                    "SIGTERM saves first. Multi-GPU: `accelerate launch -m linedraw distill ...`. The student is "
                    "OUT/student.safetensors (+ .json), usable as `--checkpoint` anywhere.")
    parser.add_argument("photos", nargs="+", help="unlabelled photos: files, folders (recursive) or glob patterns")
    add_output(parser, "run folder (pairs, state, metrics, student)", metavar="OUT")
    parser.add_argument("--teacher", default=defaults.teacher, help="teacher checkpoint name or path (default: contour)")
    parser.add_argument("--student", default=DEFAULT_STUDENT,
                        help='student architecture: a registered model name (the default is the shipped '
                             'contour-fast\'s shape), JSON {"model": ..., "kwargs": {...}}, or a .json file holding it '
                             '(default: %(default)s)')
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="short sides the teacher draws the photos at (default: the teacher's inference size)")
    parser.add_argument("--crop", type=positive_int, default=defaults.crop,
                        help="training crop, px, at least 16 and a multiple of the student's size multiple (default: "
                             "%(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                        help="crops per step and process (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps,
                        help="optimizer steps in all (default: %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=defaults.lr,
                        help="peak AdamW learning rate, after the warm-up (default: %(default)s)")
    parser.add_argument("--warmup", type=non_negative_int, default=defaults.warmup,
                        help="warm-up steps before cosine decay (default: %(default)s)")
    parser.add_argument("--edge-weight", type=float, default=defaults.edge_weight,
                        help="weight of the Sobel-gradient L1 term (0 = plain L1)")
    parser.add_argument("--line-weight", type=float, default=defaults.line_weight,
                        help="extra L1 weight on the teacher's line pixels, so unsure strokes stay dark rather than "
                             "fade (0 = plain L1; default: %(default)s)")
    parser.add_argument("--save-every", type=positive_int, default=defaults.save_every,
                        help="steps between resume points (default: %(default)s)")
    parser.add_argument("--workers", type=non_negative_int, default=defaults.workers,
                        help="data-loading processes (default: %(default)s)")
    add_device(parser)
    add_quiet(parser)
    parser.add_argument("--seed", type=non_negative_int, default=defaults.seed,
                        help="seed of the student's initial weights and of every crop (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle `linedraw distill`: 0 when done, 1 when some photos were unreadable, 2 on bad options, 128+N on signal N."""
    from linedraw.distill import DistillConfig, distill

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    student = _student_spec(args.student)
    config = DistillConfig(photos=args.photos, output_dir=args.output, teacher=args.teacher, student=student,
                           sizes=args.sizes, crop=args.crop, batch_size=args.batch_size, steps=args.steps,
                           lr=args.lr, warmup=args.warmup, edge_weight=args.edge_weight, line_weight=args.line_weight,
                           save_every=args.save_every,
                           workers=args.workers, device=args.device, seed=args.seed)
    summary = distill(config, show_progress=not args.quiet)
    for line in summary["errors"]:
        print(f"failed: {line}", file=sys.stderr)
    if summary["stopped_by"] is not None:
        print(f"stopped at step {summary['step']}; run the same command to resume", file=sys.stderr)
        return 128 + summary["stopped_by"]
    print(f"{summary['student']}: step {summary['step']}, loss {summary['loss']}, {summary['pairs']} pairs")
    return 1 if summary["errors"] else 0
