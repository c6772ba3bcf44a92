"""The CLI's shared conventions, one adder each, so every command spells and means them the same way.

- `-o/--output PATH`: where a command writes (`--out` still works for one release, with a warning).
- `--json [FILE|-]`: `--json` or `--json -` prints the results as JSON on stdout instead of the human report;
  `--json FILE` prints the report and also writes the JSON to FILE (atomically).
- `--device auto|cpu|cuda|cuda:N|mps`, default auto (CUDA, then Apple MPS, then CPU), resolved by the one
  resolver, `linedraw.convert.resolve_device`.
- `-q/--quiet`: no progress bars (`--no-progress` still works for one release).
- `--engine local|ray`: run in this process, or as a Ray Data pipeline (`linedraw.engines.ray`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Iterable


def _number(text: str, kind: type, what: str, ok, rule: str):
    """Parse `text` as `kind` and check `ok(value)`, with argparse's one-line errors."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{rule}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (batch sizes, chunk sizes, result counts)."""
    return _number(text, int, "a whole number", lambda v: v >= 1, "must be at least 1")


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (0 keeps a default)."""
    return _number(text, int, "a whole number", lambda v: v >= 0, "must be at least 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, "a number", lambda v: math.isfinite(v) and v > 0, "must be a positive number")


def seconds(text: str) -> float:
    """argparse type: a number of seconds >= 0."""
    return _number(text, float, "a number of seconds", lambda v: v >= 0, "must be 0 or more seconds")


def share(text: str) -> float:
    """argparse type: a share between 0 and 1."""
    return _number(text, float, "a number between 0 and 1", lambda v: 0 <= v <= 1, "must be between 0 and 1")


DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps (default: auto = CUDA, then MPS, then CPU)"


class WarnOnDeprecated(argparse.Action):
    """Stores like `store` (or `store_true` with nargs=0) and warns once when a deprecated spelling is used."""

    def __init__(self, option_strings: list[str], dest: str, deprecated: tuple[str, ...] = (),
                 flag: bool = False, **kwargs: Any) -> None:
        if flag:
            kwargs.update(nargs=0, default=kwargs.get("default", False))
        super().__init__(option_strings, dest, **kwargs)
        self.deprecated, self.flag = deprecated, flag

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if option_string in self.deprecated:
            current = next(s for s in self.option_strings if s not in self.deprecated and s.startswith("--"))
            print(f"warning: {option_string} is deprecated and will be removed; use {current}", file=sys.stderr)
        setattr(namespace, self.dest, True if self.flag else values)


def add_output(parser: argparse.ArgumentParser, help: str, *, metavar: str = "PATH", required: bool = True,
               old_out: bool = False) -> None:
    """`-o/--output`; `old_out=True` keeps the command's former `--out` spelling working, with a warning."""
    names = ["-o", "--output"] + (["--out"] if old_out else [])
    parser.add_argument(*names, dest="output", required=required, metavar=metavar, help=help,
                        action=WarnOnDeprecated, deprecated=("--out",))


def add_json(parser: argparse.ArgumentParser, what: str = "the results") -> None:
    """`--json [FILE|-]` (see the module docstring)."""
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE|-",
                        help=f"{what} as JSON: on stdout instead of the report (`--json` or `--json -`), or also "
                             "written to FILE")


def add_device(parser: argparse.ArgumentParser) -> None:
    """`--device`, default auto."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_engine(parser: argparse.ArgumentParser) -> None:
    """`--engine local|ray`: where the work runs (see `linedraw.engines.ray`)."""
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process (default); ray: a Ray Data pipeline on the cluster RAY_ADDRESS "
                             "names (else a local Ray instance), a model per worker, failed tasks retried; needs "
                             "pip install 'linedraw[ray]'")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """`-q/--quiet` (and the former `--no-progress`): no progress bars."""
    parser.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action=WarnOnDeprecated, flag=True,
                        deprecated=("--no-progress",), help="no progress bars")


def emit(json_target: str | None, payload: Any, report: Iterable[str]) -> None:
    """Print the human `report` lines, or the JSON `payload` on stdout, and/or write it to a file, per `--json`."""
    if json_target == "-":
        print(json.dumps(payload, indent=2))
        return
    for line in report:
        print(line)
    if json_target:
        from linedraw.eval import write_json

        write_json(json_target, payload)
