"""Every command follows the CLI conventions the README writes down (linedraw/commands/options.py)."""
from __future__ import annotations

import argparse
import json

import pytest

from linedraw.cli import build_parser, main


def _leaf_parsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """`{"convert": parser, "eval edges": parser, ...}` for every runnable command."""
    leaves = {}
    subactions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subactions:
        return {prefix.strip(): parser}
    for action in subactions:
        for name, sub in action.choices.items():
            leaves.update(_leaf_parsers(sub, f"{prefix} {name}"))
    return leaves


COMMANDS = _leaf_parsers(build_parser())


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_follows_the_conventions(name):
    parser = COMMANDS[name]
    assert parser.description, f"`linedraw {name}` has no description"
    if (json_option := _option(parser, "--json")) is not None:
        assert json_option.nargs == "?" and json_option.const == "-", f"{name}: --json must be --json [FILE|-]"
    if (device := _option(parser, "--device")) is not None:
        assert device.default == "auto", f"{name}: --device must default to auto"
    if (output := _option(parser, "-o")) is not None:
        assert "--output" in output.option_strings and output.dest == "output", f"{name}: -o must be -o/--output"
    for action in parser._actions:
        if action.option_strings and action.help is None:
            pytest.fail(f"{name}: {'/'.join(action.option_strings)} has no help")
    assert _option(parser, "--quiet") is None or _option(parser, "--quiet") is _option(parser, "--quiet")


def test_deprecated_spellings_still_work_and_warn(tmp_path, capsys):
    from tests.test_study import make_study_inputs

    photos, a, b = make_study_inputs(tmp_path)
    assert main(["study", "export", "--photos", str(photos), "--method", f"ours={a}", "--method", f"base={b}",
                 "--out", str(tmp_path / "study"), "--n", "2", "--attention", "0"]) == 0
    assert (tmp_path / "study" / "index.html").is_file()
    assert "--out is deprecated" in capsys.readouterr().err


def test_json_without_a_file_prints_json_on_stdout(tmp_path, capsys):
    from PIL import Image

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("L", (16, 16), 255).save(tmp_path / folder / "x.png")
    assert main(["eval", "agreement", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["count"] == 1
    report = str(tmp_path / "r.json")
    assert main(["eval", "agreement", str(tmp_path / "a"), str(tmp_path / "b"), "--json", report]) == 0
    assert "1 drawings" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["count"] == 1


def test_a_reader_that_goes_away_stops_the_command_quietly():
    """`linedraw models | head -0`: stdout closed before the command writes is exit 141 (as for SIGPIPE), with
    no traceback and no 'Exception ignored' at exit."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "linedraw", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
