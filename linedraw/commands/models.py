"""`linedraw models`: the shipped checkpoints, with the first line of each model card."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw models`."""
    parser = subparsers.add_parser(
        "models",
        help="list shipped checkpoints and their model cards",
        description="List the checkpoints `--checkpoint NAME` accepts: for each, the first line of its model card "
        "and where its weights are. Folders in the LINEDRAW_CHECKPOINTS environment variable are searched first.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per shipped checkpoint: name, summary (model card's first line), weights path."""
    from linedraw.checkpoint import ENV_VAR, checkpoint_dirs, list_checkpoints

    shipped = list_checkpoints()
    if not shipped:
        searched = ", ".join(str(d) for d in checkpoint_dirs())
        print(f"no shipped checkpoints found (searched {searched}; set {ENV_VAR} to add a folder)")
        return 0
    width = max(len(c.name) for c in shipped)
    for checkpoint in shipped:
        summary = _first_line(checkpoint.card) if checkpoint.card else "(no model card)"
        print(f"{checkpoint.name:<{width}}  {summary}")
        print(f"{'':<{width}}  weights: {checkpoint.weights}" + (f"  card: {checkpoint.card}" if checkpoint.card else ""))
    return 0


def _first_line(card) -> str:
    """The first non-empty line of a Markdown model card, without heading marks."""
    for line in card.read_text(encoding="utf-8").splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip()
    return "(empty model card)"
