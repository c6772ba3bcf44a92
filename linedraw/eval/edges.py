"""The BSDS500 boundary benchmark (ODS, OIS, AP) for drawings and edge maps against human boundary maps.

Pixel matching and morphological thinning come from `pyEdgeEval`, a port of the original benchmark's C++ code;
this module only loops over thresholds and aggregates the counts the way the benchmark defines them.
A drawing is dark lines on white, so its edge probability is `1 - drawing`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from linedraw.errors import InvalidFileError, MissingDependencyError, MissingFileError, UsageError
from linedraw.eval import write_json

#: Match tolerance as a fraction of the image diagonal, the BSDS500 benchmark's default.
DEFAULT_MAX_DIST = 0.0075
#: Number of evenly spaced thresholds, the benchmark's default.
DEFAULT_THRESHOLDS = 99

_PYEDGEEVAL_INSTALL = "pip install pyEdgeEval opencv-python-headless  (or: pip install 'linedraw[eval]')"


def thresholds(n: int = DEFAULT_THRESHOLDS) -> np.ndarray:
    """`n` thresholds evenly spaced strictly inside (0, 1), as the benchmark uses (99 -> 0.01 ... 0.99)."""
    if n < 1:
        raise UsageError(f"need at least one threshold, got {n}")
    return np.linspace(1.0 / (n + 1), 1.0 - 1.0 / (n + 1), n)


def load_boundaries(path: str | os.PathLike) -> np.ndarray:
    """Human boundary maps of one image from a `.npz` holding `boundaries` (annotators, H, W) bool."""
    try:
        with np.load(path) as data:
            if "boundaries" not in data:
                raise InvalidFileError(f"{path}: no 'boundaries' array (found {sorted(data.files)})")
            boundaries = np.asarray(data["boundaries"], dtype=bool)
    except (OSError, EOFError) as exc:
        raise InvalidFileError(f"{path}: cannot read ground truth: {exc}") from None
    if boundaries.ndim == 2:
        boundaries = boundaries[None]
    if boundaries.ndim != 3 or boundaries.shape[0] == 0:
        raise InvalidFileError(f"{path}: 'boundaries' must be (annotators, H, W), got shape {boundaries.shape}")
    return boundaries


def edge_probability(drawing: np.ndarray) -> np.ndarray:
    """A drawing (H, W) in [0, 1], dark lines on white -> edge probability (H, W) in [0, 1]."""
    return 1.0 - np.clip(np.asarray(drawing, dtype=np.float64), 0.0, 1.0)


def match_counts(edges: np.ndarray, boundaries: np.ndarray, thresholds: np.ndarray,
                 max_dist: float = DEFAULT_MAX_DIST, thin: bool = True, nms: bool = False) -> np.ndarray:
    """Benchmark counts of one edge map (H, W) in [0, 1] against all its annotators (K, H, W), per threshold.

    Returns (4, T): matched ground-truth pixels and all ground-truth pixels summed over annotators (recall),
    predicted pixels matched to any annotator and all predicted pixels (precision). `nms` applies the
    structured-edge non-maximum suppression soft edge maps (HED, gradients) are usually evaluated with.
    """
    correspond_pixels, binary_thin, fast_nms = _pyedgeeval()
    edges = np.asarray(edges, dtype=np.float64)
    if edges.shape != boundaries.shape[1:]:
        raise InvalidFileError(f"edge map {edges.shape} and ground truth {boundaries.shape[1:]} differ in size")
    if nms:
        edges = fast_nms(edges, r=1, s=5, m=1.01, half_prec=False)
    counts = np.zeros((4, len(thresholds)))
    previous: np.ndarray | None = None
    for i, threshold in enumerate(thresholds):
        predicted = edges >= threshold
        if thin:
            predicted = binary_thin(predicted)
        if previous is not None and np.array_equal(predicted, previous):
            counts[:, i] = counts[:, i - 1]  # near-binary drawings give the same map at many thresholds
            continue
        previous = predicted
        matched_any = np.zeros(predicted.shape, dtype=bool)
        for truth in boundaries:
            match_pred, match_truth, _, _ = correspond_pixels(predicted, truth, max_dist=max_dist)
            matched_any |= match_pred > 0
            counts[0, i] += (match_truth > 0).sum()
            counts[1, i] += truth.sum()
        counts[2, i] = matched_any.sum()
        counts[3, i] = predicted.sum()
    return counts


@dataclass
class EdgeScores:
    """The benchmark's summary: ODS (one threshold for the dataset), OIS (best threshold per image), AP."""

    ods: float
    ods_precision: float
    ods_recall: float
    ods_threshold: float
    ois: float
    ois_precision: float
    ois_recall: float
    ap: float
    images: int
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


def summarize(counts: Mapping[str, np.ndarray], thresholds: np.ndarray) -> EdgeScores:
    """Aggregate per-image `match_counts` into ODS/OIS/AP exactly as the BSDS500 benchmark does.

    ODS interpolates linearly between thresholds (pyEdgeEval's `interpolated_max_scores`); OIS sums each
    image's counts at its best threshold; AP is the area under the precision-recall curve sampled at recall
    0, 0.01, ..., 1 (the benchmark's "Area_PR")."""
    if not counts:
        raise ValueError("no images to summarize")
    from pyEdgeEval.common.metrics import interpolated_max_scores

    total = sum(counts.values())
    recall, precision = _ratio(total[0], total[1]), _ratio(total[2], total[3])
    ods_t, ods_r, ods_p, ods_f = interpolated_max_scores(thresholds, recall, precision)

    best_total = np.zeros(4)
    per_image = {}
    for name, image_counts in counts.items():
        r, p = _ratio(image_counts[0], image_counts[1]), _ratio(image_counts[2], image_counts[3])
        f = _f1(p, r)
        best = int(np.argmax(f))
        best_total += image_counts[:, best]
        per_image[name] = {"f": float(f[best]), "precision": float(p[best]), "recall": float(r[best]),
                           "threshold": float(thresholds[best])}
    ois_r, ois_p = _ratio(best_total[0], best_total[1]), _ratio(best_total[2], best_total[3])

    unique_recall, first = np.unique(recall, return_index=True)
    if len(unique_recall) > 1:
        sampled = np.interp(np.linspace(0, 1, 101), unique_recall, precision[first], left=0.0, right=0.0)
        ap = float(sampled.sum() * 0.01)
    else:
        ap = 0.0
    return EdgeScores(ods=float(ods_f), ods_precision=float(ods_p), ods_recall=float(ods_r),
                      ods_threshold=float(ods_t), ois=float(_f1(ois_p, ois_r)), ois_precision=float(ois_p),
                      ois_recall=float(ois_r), ap=ap, images=len(counts), per_image=per_image)


@dataclass
class EdgeReport:
    """Scores plus what could not be evaluated: ground truth without a drawing, drawings without ground
    truth, and files that failed to load (each `"path: reason"`)."""

    scores: EdgeScores | None
    settings: dict
    missing_drawings: list[str]
    missing_ground_truth: list[str]
    errors: list[str]
    resized: list[str]

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        out = asdict(self)
        out["scores"] = self.scores.to_dict() if self.scores else None
        return out


def evaluate_edges(drawings: str | os.PathLike, ground_truth: str | os.PathLike,
                   n_thresholds: int = DEFAULT_THRESHOLDS, max_dist: float = DEFAULT_MAX_DIST, thin: bool = True,
                   nms: bool = False, edge_maps: bool = False, workers: int = 1,
                   counts_file: str | os.PathLike | None = None, progress: bool = True) -> EdgeReport:
    """Benchmark every drawing in `drawings` whose stem has a `<stem>.npz` in `ground_truth`.

    `edge_maps=True` reads white-on-black edge maps (HED outputs) instead of drawings. `counts_file` keeps
    per-image counts (written atomically after each image), so an interrupted run resumes where it stopped.
    """
    from tqdm import tqdm

    from linedraw.images import display_path, list_images

    _pyedgeeval()  # fail fast with the install hint, before any work
    gt_files = {p.stem: p for p in sorted(Path(ground_truth).glob("*.npz"))}
    if not gt_files:
        raise MissingFileError(f"{ground_truth}: no ground-truth .npz files")
    drawing_files: dict[str, Path] = {}
    for path, _ in list_images([drawings]):
        drawing_files.setdefault(path.stem, path)
    settings = {"thresholds": n_thresholds, "max_dist": max_dist, "thin": thin, "nms": nms, "edge_maps": edge_maps}
    missing_drawings = sorted(set(gt_files) - set(drawing_files))
    missing_gt = sorted(display_path(drawing_files[s]) for s in set(drawing_files) - set(gt_files))
    names = sorted(set(gt_files) & set(drawing_files))

    counts = _load_counts(counts_file, settings)
    counts = {name: c for name, c in counts.items() if name in names}
    todo = [(name, str(drawing_files[name]), str(gt_files[name]), settings) for name in names if name not in counts]
    errors: list[str] = []
    resized: list[str] = []
    levels = thresholds(n_thresholds)
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(todo) > 1 else None
    results: Iterable = pool.map(_count_one, todo) if pool is not None else map(_count_one, todo)
    try:
        bar = tqdm(results, total=len(todo), desc="edges", unit="img", disable=not progress or not todo)
        for name, image_counts, error, was_resized in bar:
            if error:
                errors.append(error)
                continue
            counts[name] = image_counts
            if was_resized:
                resized.append(display_path(drawing_files[name]))
            if counts_file is not None:
                _save_counts(counts_file, settings, counts)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    scores = summarize({n: counts[n] for n in sorted(counts)}, levels) if counts else None
    return EdgeReport(scores=scores, settings=settings, missing_drawings=missing_drawings,
                      missing_ground_truth=missing_gt, errors=errors, resized=sorted(resized))


def _count_one(task: tuple[str, str, str, dict]) -> tuple[str, np.ndarray | None, str | None, bool]:
    """Worker: counts for one drawing, or the error naming the file that failed."""
    from PIL import Image

    from linedraw.images import ImageError, open_image

    name, drawing_path, gt_path, settings = task
    try:
        boundaries = load_boundaries(gt_path)
        image = open_image(drawing_path, mode="L")
    except (ImageError, ValueError) as exc:
        return name, None, str(exc), False
    height, width = boundaries.shape[1:]
    was_resized = image.size != (width, height)
    if was_resized:
        image = image.resize((width, height), Image.BILINEAR)
    values = np.asarray(image, dtype=np.float64) / 255.0
    edges = values if settings["edge_maps"] else edge_probability(values)
    image_counts = match_counts(edges, boundaries, thresholds(settings["thresholds"]), settings["max_dist"],
                                settings["thin"], settings["nms"])
    return name, image_counts, None, was_resized


def _load_counts(path: str | os.PathLike | None, settings: dict) -> dict[str, np.ndarray]:
    if path is None or not os.path.exists(path):
        return {}
    with open(path) as handle:
        saved = json.load(handle)
    if saved.get("settings") != settings:
        raise InvalidFileError(f"{path}: saved counts were made with {saved.get('settings')}, not {settings}; "
                         "use another counts_file or delete it")
    return {name: np.asarray(value, dtype=np.float64) for name, value in saved["counts"].items()}


def _save_counts(path: str | os.PathLike, settings: dict, counts: Mapping[str, np.ndarray]) -> None:
    write_json(path, {"settings": settings, "counts": {name: c.tolist() for name, c in counts.items()}})


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return numerator / (denominator + (denominator == 0))


def _f1(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    total = precision + recall
    return 2.0 * precision * recall / (total + (total == 0))


def _pyedgeeval() -> tuple:
    """pyEdgeEval's matcher, thinning and NMS, or an ImportError saying how to install them."""
    try:
        # pyEdgeEval prints a warning about optional .mat support on import; keep stdout clean for --json.
        with contextlib.redirect_stdout(io.StringIO()):
            from pyEdgeEval._lib import correspond_pixels
            from pyEdgeEval.preprocess import binary_thin, fast_nms
    except ImportError as exc:
        raise MissingDependencyError(f"the edge benchmark needs pyEdgeEval ({exc}); "
                                     f"install: {_PYEDGEEVAL_INSTALL}") from exc
    return correspond_pixels, binary_thin, fast_nms


def iter_report_lines(report: EdgeReport) -> Iterator[str]:
    """Human-readable lines for the command line."""
    s = report.scores
    if s is not None:
        yield f"images evaluated: {s.images}"
        yield f"ODS F {s.ods:.4f} (P {s.ods_precision:.4f}, R {s.ods_recall:.4f}, threshold {s.ods_threshold:.3f})"
        yield f"OIS F {s.ois:.4f} (P {s.ois_precision:.4f}, R {s.ois_recall:.4f})"
        yield f"AP    {s.ap:.4f}"
    if report.resized:
        yield f"{len(report.resized)} drawing(s) resized to their ground truth's size"
    if report.missing_drawings:
        missing = report.missing_drawings
        yield f"{len(missing)} ground-truth image(s) without a drawing: {_shorten(missing)}"
    if report.missing_ground_truth:
        missing = report.missing_ground_truth
        yield f"{len(missing)} drawing(s) without ground truth: {_shorten(missing)}"
    for error in report.errors:
        yield f"error: {error}"


def _shorten(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
