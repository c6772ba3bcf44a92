"""Hostile input, end to end through the CLI: every kind of bad file and bad argument a user can hand linedraw.

Each case must give one line naming the file or the argument, a truthful exit code, no traceback, and must not
touch anything outside the output folder. The commands run in-process through `linedraw.cli.main`, so a bug
(any exception that is not a user error) fails the test with its traceback.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from linedraw.cli import main

EMBEDDER = "timm:test_efficientnet:random"


def _tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> content hash (or 'dir') of everything under `root`, to prove nothing was touched."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = os.fsdecode(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _photo(path: Path, seed: int = 0, size: tuple[int, int] = (40, 32)) -> Path:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(120, 255, 3)))
    ImageDraw.Draw(image).ellipse((4, 4, 24, 20), fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Path:
    """A tiny random generator checkpoint (fast to run, enough to exercise the pipeline)."""
    import torch

    from linedraw.checkpoint import save_generator
    from linedraw.models import create_model

    root = tmp_path_factory.mktemp("hostile-model")
    torch.manual_seed(0)
    kwargs = {"in_channels": 3, "out_channels": 1, "ngf": 4, "n_blocks": 1}
    save_generator(create_model("resnet_generator", **kwargs), root / "gen",
                   {"model": "resnet_generator", "kwargs": kwargs})
    return root / "gen.safetensors"


def _bad_photo_folder(root: Path) -> tuple[list[str], list[str]]:
    """A folder of good photos and every kind of bad one; returns (good names, bad names)."""
    root.mkdir(parents=True)
    good = ["good.jpg", "<img src=x onerror=alert(1)>.png", "anim.gif"]
    _photo(root / good[0])
    _photo(root / good[1], seed=1)
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / good[2], save_all=True, append_images=frames[1:], duration=100, loop=0)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    full = root / "_full.png"
    _photo(full, seed=2)
    (root / "truncated.png").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("this is not an image\n")
    # A decompression bomb: small on disk, 144 M pixels when decoded.
    Image.new("1", (12000, 12000)).save(root / "bomb.png")
    bad = ["corrupt.jpg", "truncated.png", "empty.jpg", "notes.png", "bomb.png"]
    return good, bad


def test_convert_batch_of_every_bad_kind(tmp_path, generator, capsys):
    photos = tmp_path / "photos"
    good, bad = _bad_photo_folder(photos)
    before = _tree_digest(photos)
    out = tmp_path / "out"
    rc = main(["convert", str(photos), "-o", str(out), "--checkpoint", str(generator), "--size", "32",
               "--errors", str(tmp_path / "errors.csv")])
    captured = capsys.readouterr()
    assert rc == 1, "some files failed, so the exit code must say so"
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    for name in bad:
        mentions = [line for line in lines if name in line and "warning" not in line.lower()]
        assert len(mentions) == 1, f"{name}: expected one line, got {mentions}"
    assert any("anim.gif" in line and "frame" in line for line in lines), "animated GIF: say only one frame is used"
    for name in good:
        assert (out / (Path(name).stem + ".png")).is_file(), f"{name} was not converted"
    written = {p.name for p in out.iterdir()}
    assert written == {Path(name).stem + ".png" for name in good}, "only good photos produce outputs, no temp files"
    assert _tree_digest(photos) == before, "the input folder was touched"
    rows = (tmp_path / "errors.csv").read_text().splitlines()
    assert len(rows) == 1 + len(bad)


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI, expect exit 2 and exactly one stderr line containing every needle."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.lower().startswith("warning")]
    assert rc == 2, f"{argv}: exit {rc}, stderr {err!r}"
    assert len(lines) == 1, f"{argv}: expected one line, got {lines}"
    for needle in needles:
        assert needle in lines[0], f"{argv}: {needle!r} not in {lines[0]!r}"
    return lines[0]


def test_bad_checkpoints_give_one_line(tmp_path, generator, capsys):
    photo = _photo(tmp_path / "p.jpg")
    out = str(tmp_path / "out")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(generator.read_bytes()[:1000])
    _one_line_error(capsys, ["convert", str(photo), "-o", out, "--checkpoint", str(truncated)], "truncated.safetensors")

    import torch

    pickled = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2)}, pickled)
    _one_line_error(capsys, ["convert", str(photo), "-o", out, "--checkpoint", str(pickled)], "model.pt", "pickle")

    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(generator.read_bytes())
    config = json.loads(generator.with_suffix(".json").read_text())
    config["kwargs"]["ngf"] = 100000
    huge.with_suffix(".json").write_text(json.dumps(config))
    _one_line_error(capsys, ["convert", str(photo), "-o", out, "--checkpoint", str(huge)], "huge")
    assert not Path(out).exists() or not any(Path(out).iterdir())


def test_bad_arguments_give_one_line(tmp_path, generator, capsys):
    import torch

    photo = _photo(tmp_path / "p.jpg")
    out = str(tmp_path / "out")
    base = ["convert", str(photo), "-o", out, "--checkpoint", str(generator)]
    _one_line_error(capsys, base + ["--line-weight", "1000"], "line")
    _one_line_error(capsys, base + ["--threshold", "7"], "threshold")
    _one_line_error(capsys, base + ["--batch-size", "0"], "batch")
    if not torch.cuda.is_available():
        _one_line_error(capsys, base + ["--device", "cuda"], "cuda")
    # A path under a file: unwritable for everyone, root included.
    _one_line_error(capsys, base + ["--errors", str(photo / "errors.csv")], "errors.csv")
    _one_line_error(capsys, base + ["--errors", str(tmp_path / "no" / "such" / "dir" / "errors.csv")], "errors.csv")
    assert not Path(out).exists() or not any(Path(out).iterdir()), "a setup error must not convert anything"
