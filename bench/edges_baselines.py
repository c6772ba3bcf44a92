"""BSDS500 edge benchmark of classic baselines: gradient of a blurred image < Canny < HED (the textbook order).

Checks that `linedraw.eval.edges` reproduces the known ordering, and puts drawings from checkpoints on the same
scale. The blurred-image gradient is scored raw (the benchmark thins each thresholded map); Canny is thin by
construction; HED gets non-maximum suppression, as in the HED paper's protocol. HED was trained on BSDS500 train+val, so its val numbers are optimistic.

    OMP_NUM_THREADS=1 python bench/edges_baselines.py --data ../shared/data/bsds500 --split val \
        [--limit 20] [--thresholds 99] [--workers 2] [--drawings NAME=DIR ...]
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import feature

from linedraw.eval.edges import edge_probability, load_boundaries, match_counts, summarize, thresholds


def gradient_edges(gray: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Gradient magnitude of a Gaussian-blurred image, scaled to [0, 1] per image."""
    magnitude = ndimage.gaussian_gradient_magnitude(gray, sigma)
    return magnitude / max(magnitude.max(), 1e-12)


def canny_edges(gray: np.ndarray, sigma: float = 2.0, levels: int = 8) -> np.ndarray:
    """Canny swept over its hysteresis thresholds (as the BSDS benchmark scores it): the share of
    (high, low) quantile pairs, from lenient to strict, at which a pixel is an edge."""
    highs = np.linspace(0.70, 0.98, levels)
    maps = [feature.canny(gray, sigma=sigma, low_threshold=h - 0.1, high_threshold=h, use_quantiles=True)
            for h in highs]
    return np.mean(maps, axis=0)


def _count(task: tuple) -> tuple[str, str, np.ndarray, float]:
    method, name, edges, gt_path, n_thresholds, nms = task
    start = time.perf_counter()
    counts = match_counts(edges, load_boundaries(gt_path), thresholds(n_thresholds), nms=nms)
    return method, name, counts, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the bsds500 folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    parser.add_argument("--thresholds", type=int, default=99)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-hed", action="store_true")
    parser.add_argument("--drawings", action="append", default=[], metavar="NAME=DIR",
                        help="also score drawings <stem>.png in DIR (dark lines on white)")
    parser.add_argument("--json", help="write the scores here")
    args = parser.parse_args()

    root = Path(args.data) / args.split
    gt_files = sorted((root / "groundTruth").glob("*.npz"))
    if args.limit:
        gt_files = gt_files[: args.limit]
    hed = None
    if not args.no_hed:
        from linedraw.teachers.hed import load_hed

        hed = load_hed()
    drawing_dirs = dict(item.split("=", 1) for item in args.drawings)

    tasks = []
    for gt_path in gt_files:
        name = gt_path.stem
        rgb = Image.open(root / "images" / f"{name}.jpg").convert("RGB")
        gray = np.asarray(rgb.convert("L"), dtype=np.float64) / 255.0
        tasks.append(("gradient (blurred)", name, gradient_edges(gray), gt_path, args.thresholds, False))
        tasks.append(("canny", name, canny_edges(gray), gt_path, args.thresholds, False))
        if hed is not None:
            import torch

            with torch.no_grad():
                pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
                edges = hed(pixels)[0, 0].double().numpy()
            tasks.append(("hed", name, edges, gt_path, args.thresholds, True))
        for method, directory in drawing_dirs.items():
            drawing = Image.open(Path(directory) / f"{name}.png").convert("L").resize(rgb.size, Image.BILINEAR)
            tasks.append((method, name, edge_probability(np.asarray(drawing) / 255.0), gt_path, args.thresholds,
                          False))

    counts: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for method, name, image_counts, took in pool.map(_count, tasks):
            counts.setdefault(method, {})[name] = image_counts
            seconds[method] = seconds.get(method, 0.0) + took
    results = {}
    print(f"BSDS500 {args.split}, {len(gt_files)} images, {args.thresholds} thresholds, max_dist 0.0075, thinning")
    print("| method | ODS | OIS | AP | matching s/img |")
    print("|---|---|---|---|---|")
    for method, per_image in counts.items():
        s = summarize(per_image, thresholds(args.thresholds))
        results[method] = {"ods": s.ods, "ois": s.ois, "ap": s.ap, "images": s.images}
        print(f"| {method} | {s.ods:.3f} | {s.ois:.3f} | {s.ap:.3f} | {seconds[method] / len(per_image):.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
