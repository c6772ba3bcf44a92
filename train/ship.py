"""Turn a training run into a shipped checkpoint: `checkpoints/<name>.safetensors` + `<name>.json`.

    python train/ship.py runs/contour-cpu --name contour --size 256 [--fp32]

Takes the run's latest G_A, stores it (float16 unless --fp32) with its JSON config extended by what a model
card needs: the recommended inference size, the run's resolved training config, steps and wall time, and the
losses averaged over the last 100 logged steps. The model card (`<name>.md`) is written by a person.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from linedraw.checkpoint import load_generator, save_generator

REPO = Path(__file__).resolve().parents[1]


def run_summary(run: Path, last: int = 100) -> dict:
    """Steps, wall-clock seconds and mean losses over the last `last` logged steps of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"error: {run / 'metrics.jsonl'} has no rows")
    tail = [r for r in rows if r["step"] > rows[-1]["step"] - last]
    keys = sorted({k for r in tail for k in r} - {"step", "epoch", "lr", "sec_per_step"})
    logged_every = rows[1]["step"] - rows[0]["step"] if len(rows) > 1 else 1
    return {
        "steps": rows[-1]["step"],
        "epochs_seen": rows[-1]["epoch"],
        "train_seconds": round(sum(r["sec_per_step"] * logged_every for r in rows)),
        f"losses_last_{last}_steps": {k: round(sum(r[k] for r in tail if k in r) / len(tail), 4) for k in keys},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="training output_dir")
    parser.add_argument("--name", required=True, help="checkpoint name, e.g. contour")
    parser.add_argument("--size", type=int, required=True, help="recommended short side for conversion")
    parser.add_argument("--out", type=Path, default=REPO / "checkpoints")
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights (default: float16)")
    args = parser.parse_args(argv)

    model, config = load_generator(args.run)
    config = {
        "model": config["model"],
        "kwargs": config["kwargs"],
        "inference": {"size": args.size},
        "training": {**config.get("training", {}), **run_summary(args.run),
                     "config": yaml.safe_load((args.run / "config.yaml").read_text())},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    weights = save_generator(model, args.out / args.name, config, half=not args.fp32)
    print(f"wrote {weights} and {weights.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
