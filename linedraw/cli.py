"""The `linedraw` command: builds the argument parser from the command modules and dispatches.

Each module in `linedraw/commands/` exposes `register(subparsers)`, which adds its sub-command and sets
`func(args) -> int` as the handler. Command modules import torch and friends inside their handlers, so
`linedraw --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order here is the order in `linedraw --help`.
COMMAND_MODULES: list[str] = [
    "linedraw.commands.convert",
    "linedraw.commands.models",
    "linedraw.commands.export",
    "linedraw.commands.eval",
    "linedraw.commands.study",
    "linedraw.commands.train",
    "linedraw.commands.precompute",
    "linedraw.commands.distill",
    "linedraw.commands.index",
    "linedraw.commands.search",
    "linedraw.commands.serve",
    "linedraw.commands.retrieval",
]


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every sub-command registered."""
    from linedraw import __version__

    parser = argparse.ArgumentParser(prog="linedraw", description="Photos to informative line drawings.")
    parser.add_argument("--version", action="version", version=f"linedraw {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `linedraw` console script; returns the process exit code.

    A `LinedrawError` (something the user can fix), or an operating-system error about a named file (missing,
    unreadable, read-only), is printed as one line with exit code 2; Ctrl-C exits 130 without a traceback, and a
    reader of stdout that went away (`| head`) 141; any other exception is a bug and keeps its traceback.
    """
    from linedraw.errors import LinedrawError

    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader that went away is handled below
        return code
    except LinedrawError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away (`linedraw ... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail again
        return 141
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
