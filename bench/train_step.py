"""Seconds per training step of named recipes on this machine, broken down by part, side by side in one run.

Each recipe is a shipped config plus overrides, run through the package's own loop pieces
(`linedraw.training.method`: setup, fill_targets, generator_step, discriminator_step) on a small copy of the
shared data (photos with masks, drawings), with HED target maps precomputed for it (not timed) for the recipes
that read them. Parts: data (waiting for the loader), targets (the geometry estimator per batch), the forward
pass of each teacher loss (semantic, geometry = frozen features + head, segmentation = U-Net), D (the whole
discriminator step), optimizer (all optimizer steps), and "G + backward" (the generators' forward passes and
the one backward pass through everything: the rest of the generator step). The ratio column compares each
recipe's step with the first one's, measured in the same run.

    python bench/train_step.py [--steps 6] [--recipes today,new,paper-new] [--threads 2]
    python bench/train_step.py --prepare-data DIR             # the small data copy, for a machine without it
    python bench/train_step.py --data DIR --recipes paper-new --set optim.mixed_precision=bf16 --warm-start RUN

On CUDA every part is timed to the end of its kernels (the timers synchronise the device).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PARTS = ("data", "targets", "semantic", "geometry", "segmentation", "G + backward", "D", "optimizer")

#: name -> (config, overrides, read precomputed target maps)
RECIPES = {
    "today": ("contour-cpu", [], False),
    "targets": ("contour-cpu", [], True),
    "new": ("contour-cpu", ["model.upsample=resize", "model.diffaugment=color,translation,cutout"], True),
    "paper-today": ("contour-cpu", ["data.size=256", "data.load_size=286", "loss.cycle=0.1", "model.ngf=64"], False),
    "paper-new": ("contour-cpu", ["data.size=256", "data.load_size=286", "loss.cycle=0.1", "model.upsample=resize",
                                  "model.diffaugment=color,translation,cutout"], True),
}


def small_data(root: Path, photos: int = 12, drawings: int = 12) -> Path:
    """A copy of a few shared photos (with COCO masks) and drawings, plus their HED maps in targets/."""
    from linedraw.teachers.targets import build_estimator, precompute

    coco = sorted((SHARED / "coco128" / "images").glob("*.jpg"))[:photos]
    (root / "photos").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "drawings").mkdir()
    for path in coco:
        shutil.copy(path, root / "photos" / path.name)
        shutil.copy(SHARED / "coco128" / "masks" / f"{path.stem}.png", root / "masks" / f"{path.stem}.png")
    for path in sorted((SHARED / "bsds500" / "train" / "drawings").glob("*.png"))[:drawings]:
        shutil.copy(path, root / "drawings" / path.name)
    precompute(sorted((root / "photos").iterdir()), root / "targets", build_estimator("hed"), size=144)
    return root


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer:
    """Accumulates seconds per part for the current step."""

    def __init__(self) -> None:
        self.step: dict[str, float] = defaultdict(float)

    def wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            _sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync()
                self.step[part] += time.perf_counter() - start
        return timed


def measure(name: str, data: Path, out: Path, steps: int, extra: list[str] = ()) -> dict[str, float]:
    """Median seconds per part (and per whole step) over `steps` steps after one warm-up step; `extra` overrides
    go after the recipe's own."""
    from linedraw.config import find_config, load_config
    from linedraw.data.unpaired import UnpairedDataset
    from linedraw.training import method

    config, overrides, targets = RECIPES[name]
    photos = f"data.photos=[{{path: photos, masks: masks{', targets: targets' if targets else ''}}}]"
    cfg = load_config(find_config(config), overrides + [
        f"data.root={data}", photos, "data.drawings=[{path: drawings}]", "data.workers=0", f"output_dir={out}",
        *extra])
    run, loader, _, _ = method.setup(cfg, UnpairedDataset.from_config(cfg.data), out)
    if cfg.warm_start:
        from linedraw.training.warm_start import warm_start

        warm_start({k: run.accelerator.unwrap_model(net) for k, net in run.nets.items()}, cfg.warm_start)
    timer = Timer()
    original = {"fill_targets": method.fill_targets, "step_optimizer": method.step_optimizer}
    method.step_optimizer = timer.wrap("optimizer", original["step_optimizer"])
    for loss in list(run.losses):
        run.losses[loss] = timer.wrap(loss, run.losses[loss])
    discriminator_step = timer.wrap("D", method.discriminator_step)
    fill_targets = timer.wrap("targets", original["fill_targets"])
    rows: list[dict[str, float]] = []
    try:
        batches = iter(loader)
        for _ in range(steps + 1):
            timer.step.clear()
            _sync()
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            timer.step["data"] = time.perf_counter() - start
            fill_targets(run, batch)
            tick = time.perf_counter()
            _, fakes = method.generator_step(run, batch)
            _sync()
            teachers = sum(timer.step[k] for k in ("semantic", "geometry", "segmentation"))
            timer.step["G + backward"] = time.perf_counter() - tick - teachers - timer.step["optimizer"]
            if "opt_D" in run.optimizers:
                g_optimizer = timer.step["optimizer"]
                discriminator_step(run, batch, fakes)
                timer.step["optimizer"] = g_optimizer  # the D step's own optimizer step is part of D
            _sync()
            timer.step["step"] = time.perf_counter() - start
            rows.append(dict(timer.step))
    finally:
        method.step_optimizer = original["step_optimizer"]
    rows = rows[1:]
    return {part: statistics.median(row.get(part, 0.0) for row in rows) for part in (*PARTS, "step")} | {
        "spread": max(r["step"] for r in rows) - min(r["step"] for r in rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per recipe (after one warm-up)")
    parser.add_argument("--recipes", default="today,new,paper-new", help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--data", help="a folder made by --prepare-data (default: a fresh copy of the shared data)")
    parser.add_argument("--prepare-data", metavar="DIR", help="only write the small data copy to DIR, then stop")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every recipe, e.g. optim.mixed_precision=bf16 (repeatable)")
    parser.add_argument("--warm-start", help="start the nets from this run folder or checkpoint (warm_start)")
    args = parser.parse_args()
    if args.data is None and not (SHARED / "README.md").is_file():
        raise SystemExit(f"bench/train_step.py needs the shared data at {SHARED} (or --data DIR)")
    if args.prepare_data:
        small_data(Path(args.prepare_data))
        print(f"wrote {args.prepare_data}")
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.recipes.split(",")
    extra = args.set + ([f"warm_start={args.warm_start}"] if args.warm_start else [])
    results = {}
    with tempfile.TemporaryDirectory(prefix="linedraw-bench-") as tmp:
        data = Path(args.data) if args.data else small_data(Path(tmp) / "data")
        for name in names:
            results[name] = measure(name, data, Path(tmp) / f"run-{name}", args.steps, extra)
    reference = results[names[0]]["step"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"seconds per step (median of {args.steps}) on {device}; ratio = step / {names[0]}'s step"
          + (f"; with {' '.join(extra)}" if extra else ""))
    print(f"{'part':<14}" + "".join(f"{n:>13}" for n in names))
    for part in (*PARTS, "step", "spread"):
        print(f"{part:<14}" + "".join(f"{results[n][part]:>13.3f}" for n in names))
    print(f"{'ratio':<14}" + "".join(f"{results[n]['step'] / reference:>12.2f}x" for n in names))
    for name in names:
        config, overrides, targets = RECIPES[name]
        print(f"  {name}: {config} {' '.join(overrides)}{' + precomputed HED targets' if targets else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
