"""`linedraw distill PHOTOS... -o OUT [--teacher contour]`: train a compact student to draw like a teacher."""
from __future__ import annotations

import argparse
import json
import logging
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw distill`."""
    from linedraw.distill import DEFAULT_STUDENT, DistillConfig

    defaults = DistillConfig(photos=[], output_dir="")
    parser = subparsers.add_parser(
        "distill", help="train a fast student generator to reproduce a teacher checkpoint's drawings",
        description="Draw the photos with the teacher (cached under OUT/pairs/), then train a compact student on "
                    "random crops with line-weighted L1 + Sobel-gradient L1. Rerunning the same command resumes; Ctrl-C or "
                    "SIGTERM saves first. Multi-GPU: `accelerate launch -m linedraw distill ...`. The student is "
                    "OUT/student.safetensors (+ .json), usable as `--checkpoint` anywhere.")
    parser.add_argument("photos", nargs="+", help="unlabelled photos: files, folders (recursive) or glob patterns")
    parser.add_argument("-o", "--output", required=True, help="run folder (pairs, state, metrics, student)")
    parser.add_argument("--teacher", default=defaults.teacher, help="teacher checkpoint name or path (default: contour)")
    parser.add_argument("--student", default=json.dumps(DEFAULT_STUDENT),
                        help='student architecture as JSON {"model": ..., "kwargs": {...}} (default: %(default)s)')
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="short sides the teacher draws the photos at (default: the teacher's inference size)")
    parser.add_argument("--crop", type=int, default=defaults.crop, help="training crop, px (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="crops per step and process")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="warm-up steps before cosine decay")
    parser.add_argument("--edge-weight", type=float, default=defaults.edge_weight,
                        help="weight of the Sobel-gradient L1 term (0 = plain L1)")
    parser.add_argument("--line-weight", type=float, default=defaults.line_weight,
                        help="extra L1 weight on the teacher's line pixels, so unsure strokes stay dark rather than "
                             "fade (0 = plain L1; default: %(default)s)")
    parser.add_argument("--save-every", type=int, default=defaults.save_every, help="steps between resume points")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="data-loading processes")
    parser.add_argument("--device", default=defaults.device, help="auto or cpu (accelerate picks the GPU)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle `linedraw distill`: 0 when done, 1 when some photos were unreadable, 2 on bad options, 128+N on signal N."""
    from linedraw.checkpoint import CheckpointError
    from linedraw.distill import DistillConfig, distill

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        student = json.loads(args.student)
        if not isinstance(student, dict) or "model" not in student:
            raise ValueError('--student must be a JSON object with a "model" key')
    except ValueError as err:
        print(f"error: --student: {err}", file=sys.stderr)
        return 2
    for name in ("steps", "batch_size", "save_every"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    config = DistillConfig(photos=args.photos, output_dir=args.output, teacher=args.teacher, student=student,
                           sizes=args.sizes, crop=args.crop, batch_size=args.batch_size, steps=args.steps,
                           lr=args.lr, warmup=args.warmup, edge_weight=args.edge_weight, line_weight=args.line_weight,
                           save_every=args.save_every,
                           workers=args.workers, device=args.device, seed=args.seed)
    try:
        summary = distill(config)
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in summary["errors"]:
        print(f"failed: {line}", file=sys.stderr)
    if summary["stopped_by"] is not None:
        print(f"stopped at step {summary['step']}; run the same command to resume", file=sys.stderr)
        return 128 + summary["stopped_by"]
    print(f"{summary['student']}: step {summary['step']}, loss {summary['loss']}, {summary['pairs']} pairs")
    return 1 if summary["errors"] else 0
