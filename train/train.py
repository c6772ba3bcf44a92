"""Train a photo -> line-drawing generator: the script spelling of `linedraw train` (linedraw.training.method).

    python train/train.py --config train/configs/smoke.yaml [key.sub=value ...] [--fresh]
    accelerate launch train/train.py --config train/configs/contour-offline.yaml

Same as `linedraw train CONFIG ...` / `accelerate launch -m linedraw train CONFIG ...`, which also find the shipped
configs by name.
"""
from __future__ import annotations

import argparse
import sys

from linedraw.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """Parse this script's `--config FILE [overrides] [--fresh]` and run `linedraw train` with them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file or shipped config name (see linedraw/configs/)")
    parser.add_argument("--fresh", action="store_true", help="ignore checkpoints in output_dir and start over")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.max_steps=100 data.size=128")
    args = parser.parse_args(argv)
    # --fresh before CONFIG: argparse takes CONFIG and the overrides in one go, so no option may sit between them
    return cli_main(["train", *(["--fresh"] if args.fresh else []), args.config, "--", *args.overrides])


if __name__ == "__main__":
    sys.exit(main())
