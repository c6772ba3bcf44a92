"""`linedraw eval ...`: a group of evaluation sub-commands, one module each in EVAL_MODULES."""
from __future__ import annotations

import argparse
import importlib

# Each module exposes `register(eval_subparsers)` and sets `func` on its parser.
EVAL_MODULES: list[str] = ["linedraw.commands.eval_retrieval", "linedraw.commands.eval_clip",
                           "linedraw.commands.eval_edges", "linedraw.commands.eval_compare",
                           "linedraw.commands.eval_agreement", "linedraw.commands.eval_strokes"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw eval` and its sub-commands."""
    parser = subparsers.add_parser("eval", help="evaluate drawings, checkpoints and retrieval")
    eval_sub = parser.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)
    for name in EVAL_MODULES:
        importlib.import_module(name).register(eval_sub)
