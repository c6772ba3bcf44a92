"""`linedraw train CONFIG [key.sub=value ...] [--fresh]`: train the photo -> line-drawing generator."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw train`."""
    parser = subparsers.add_parser(
        "train", help="train a photo-to-drawing generator from a YAML config (the paper's method)",
        description="Train (or resume) a generator with the losses the config enables: GAN, cycle, semantic "
                    "(CLIP or an offline stand-in), geometry and segmentation. CONFIG is a shipped config's name "
                    "(smoke, contour-cpu, contour-offline, paper) or a YAML file. Rerunning the same command "
                    "resumes from OUTPUT_DIR/checkpoints/latest; Ctrl-C or SIGTERM saves first. Several GPUs: "
                    "`accelerate launch -m linedraw train CONFIG`. `linedraw convert --checkpoint OUTPUT_DIR` "
                    "uses the result.")
    parser.add_argument("config", metavar="CONFIG", help="shipped config name or YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. optim.max_steps=100 data.size=128 output_dir=runs/x "
                             "(a relative data.root here is from the current directory)")
    parser.add_argument("--fresh", action="store_true", help="ignore checkpoints in output_dir and start over")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle `linedraw train`: 0 when done, 1 on a non-finite loss, 128+N when stopped by signal N."""
    from linedraw.config import find_config, load_config
    from linedraw.training.method import train

    return train(load_config(find_config(args.config), args.overrides), fresh=args.fresh)
