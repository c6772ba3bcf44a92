"""The seed paper's table for two checkpoints on one photo set: recognizability, edge F-score where ground truth
exists, and a user-study page, from drawings converted once into `out_dir/drawings/<name>/`."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from linedraw.eval.edges import EdgeReport
from linedraw.eval.recognizability import RecognizabilityReport
from linedraw.eval.study import StudyExport


def method_names(checkpoints: Sequence[str]) -> list[str]:
    """Short unique column names: the checkpoint's name or file/folder stem, numbered when they collide."""
    names = [Path(c.rstrip("/\\")).stem or c for c in checkpoints]
    return [f"{n}-{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def convert_folder(checkpoint: str, photos: str | os.PathLike, out_dir: str | os.PathLike, size: int,
                   device: str = "auto", progress: bool = True) -> list[str]:
    """Draw every photo under `photos` into `out_dir`, mirroring the tree, through the conversion pipeline
    (drawings already there are kept, writes are atomic); returns the failures, each naming its file."""
    import linedraw
    from linedraw.pipeline import convert_files, plan_outputs

    converter = linedraw.load(checkpoint, device=device, size=size)
    summary = convert_files(converter, plan_outputs([photos], out_dir), skip_existing=True, progress=progress)
    return [f"{path}: {reason}" for path, reason in summary.failures]


@dataclass
class Comparison:
    """Per-method reports; `edges` is empty when no ground truth was given."""

    methods: list[str]
    recognizability: dict[str, RecognizabilityReport] = field(default_factory=dict)
    edges: dict[str, EdgeReport] = field(default_factory=dict)
    study: StudyExport | None = None
    errors: list[str] = field(default_factory=list)


def compare(checkpoints: Sequence[str], photos: str | os.PathLike, out_dir: str | os.PathLike,
            classifier, vocabulary: str, gt: str | os.PathLike | None = None,
            size: int = 512, device: str = "auto", edge_thresholds: int = 99, study_n: int = 50, seed: int = 0,
            workers: int = 1, progress: bool = True) -> Comparison:
    """Convert `photos` with each checkpoint, then score them with `classifier` (a `ZeroShotClassifier` or
    `ImageNetClassifier`), benchmark edges against `gt` if given, and export a study."""
    from linedraw.eval.edges import evaluate_edges
    from linedraw.eval.recognizability import evaluate_recognizability
    from linedraw.eval.study import export_study

    out = Path(out_dir)
    result = Comparison(methods=method_names(checkpoints))
    folders = {name: out / "drawings" / name for name in result.methods}
    for checkpoint, name in zip(checkpoints, result.methods):
        result.errors += convert_folder(checkpoint, photos, folders[name], size, device, progress)
    for name in result.methods:
        result.recognizability[name] = evaluate_recognizability(classifier, photos, folders[name], vocabulary,
                                                                progress=progress)
        if gt is not None:
            result.edges[name] = evaluate_edges(folders[name], gt, n_thresholds=edge_thresholds, workers=workers,
                                                counts_file=out / f"edge-counts-{name}.json", progress=progress)
    result.study = export_study(photos, {n: str(folders[n]) for n in result.methods}, out / "study", n=study_n,
                                seed=seed)
    return result


def format_table(result: Comparison) -> str:
    """The comparison as a Markdown table, one column per method."""
    methods = result.methods
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, values: list[float | None], digits: int = 4) -> None:
        rows.append((label, ["-" if v is None else f"{v:.{digits}f}" for v in values]))

    rec = [result.recognizability[m] for m in methods]
    if rec:
        add(f"recognizability score ({rec[0].classifier})", [r.score for r in rec])
        add("top-1 agreement", [r.top1 for r in rec])
        add("top-5 agreement", [r.top5 for r in rec])
        add("photo-drawing cosine", [r.cosine for r in rec])
        rows.append(("pairs scored", [str(r.pairs) for r in rec]))
    if result.edges:
        edges = [result.edges[m].scores for m in methods]
        add("edges ODS F", [s.ods if s else None for s in edges], 3)
        add("edges OIS F", [s.ois if s else None for s in edges], 3)
        add("edges AP", [s.ap if s else None for s in edges], 3)
        rows.append(("edge images", [str(s.images) if s else "0" for s in edges]))
    lines = ["| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
    if result.study is not None:
        index = result.study.out_dir / "index.html"
        lines += ["", f"user study: {index} ({len(result.study.trials)} trials); collect the answer CSVs, then "
                      f"`linedraw study analyze ANSWERS.csv... --trials {result.study.out_dir / 'trials.csv'}`"]
    return "\n".join(lines)
