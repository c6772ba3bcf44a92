"""Benchmark the line-art output kinds against the plain grey drawing, measured in the same run.

For each kind (grey PNG, --thin, --stroke-width 2, --format svg): seconds per photo through the conversion
pipeline (decode, network, post-processing, atomic write) on the sample photos, the ratio against grey, and
the bytes per output file.

    python bench/lineart.py [--photos samples/photos] [--checkpoint contour] [--repeat 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

KINDS = {"grey png": ({}, "png"), "--thin": ({"thin": True}, "png"),
         "--stroke-width 2": ({"stroke_width": 2.0}, "png"), "--format svg": ({"stroke_width": 2.0}, "svg")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(Path(__file__).resolve().parents[1] / "samples" / "photos"))
    parser.add_argument("--checkpoint", default="contour")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per kind (the median is shown)")
    args = parser.parse_args()

    import linedraw
    from linedraw.pipeline import convert_files, plan_outputs

    rows = []
    for name, (options, format) in KINDS.items():
        converter = linedraw.load(args.checkpoint, device="cpu", batch_size=1, **options)
        times, sizes = [], []
        for run in range(args.repeat + 1):  # the first run warms up (and compiles skan's tracer once)
            with tempfile.TemporaryDirectory() as out:
                tasks = plan_outputs([args.photos], out, format)
                start = time.perf_counter()
                summary = convert_files(converter, tasks, format=format, workers=0)
                elapsed = time.perf_counter() - start
                if run:
                    times.append(elapsed / max(1, summary.converted))
                    sizes = [task.target.stat().st_size for task in tasks if task.target.exists()]
        rows.append((name, statistics.median(times), min(times), max(times), statistics.mean(sizes)))
    reference = rows[0][1]
    print(f"{'output':<18} {'s/photo':>8} {'range':>15} {'vs grey':>8} {'bytes/file':>11}")
    for name, median, low, high, size in rows:
        print(f"{name:<18} {median:>8.3f} {f'{low:.3f}-{high:.3f}':>15} {median / reference:>7.2f}x {size:>11,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
