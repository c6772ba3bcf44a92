"""Convert: API and CLI agree, any size works, tiling is seamless, bad input never stops a batch."""
from __future__ import annotations

import csv
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import linedraw
from linedraw.checkpoint import save_generator
from linedraw.cli import main
from linedraw.convert import Converter, postprocess
from linedraw.models import create_model

REPO = Path(__file__).resolve().parents[1]
TINY = {"model": "resnet_generator", "kwargs": {"in_channels": 3, "out_channels": 1, "ngf": 8, "n_blocks": 1}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model(TINY["model"], **TINY["kwargs"])
    return save_generator(model, tmp_path_factory.mktemp("ckpt") / "tiny", TINY)


def _photo(width: int = 48, height: int = 36, seed: int = 0) -> Image.Image:
    """A smooth random photo (so the drawing has structure)."""
    rng = np.random.default_rng(seed)
    shape = (min(height, max(2, height // 6)), min(width, max(2, width // 6)), 3)
    small = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    return small.resize((width, height), Image.BILINEAR)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG declaring a huge canvas: a decompression bomb as far as a decoder can tell."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _convert(*args: str) -> int:
    return main(["convert", *map(str, args), "--workers", "1"])


# ---------------------------------------------------------------------------------------------- API


def test_api_and_cli_give_identical_pixels(tmp_path, checkpoint):
    photo = _photo(50, 38)
    photo.save(tmp_path / "photo.png")
    conv = linedraw.load(str(checkpoint), device="cpu", size=32)
    drawing = conv(photo)
    assert drawing.mode == "L" and drawing.size == photo.size  # back at the original size
    assert _convert(tmp_path / "photo.png", "-o", tmp_path / "out", "--checkpoint", checkpoint, "--size", 32) == 0
    cli = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    assert np.array_equal(cli, np.asarray(drawing))
    assert np.asarray(drawing).std() > 0  # a real drawing, not a constant image


def test_any_size_any_mode_and_streaming(checkpoint):
    conv = linedraw.load(str(checkpoint), device="cpu", size=0, batch_size=3)
    photos = [_photo(1, 1), _photo(5, 3), _photo(33, 17), _photo(33, 17, seed=1), _photo(40, 40).convert("L")]
    streamed = list(conv.batch(iter(photos)))
    assert [d.size for d in streamed] == [p.size for p in photos]
    one_by_one = [conv(p) for p in photos]
    for a, b in zip(streamed[1:], one_by_one[1:]):  # batching shares passes, not results (1x1 is flat: unstable)
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_size_sets_the_processing_resolution(checkpoint):
    model, _ = linedraw.checkpoint.load_generator(checkpoint)
    seen = []
    model.register_forward_pre_hook(lambda m, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    Converter(model, size=24, device="cpu")(_photo(64, 48))
    assert seen == [(24, 32)]  # short side 24, aspect kept, already a multiple of 4
    seen.clear()
    Converter(model, size=0, device="cpu")(_photo(30, 18))
    assert seen == [(20, 32)]  # native, padded up to multiples of 4


def test_tiling_matches_untiled_away_from_borders(checkpoint):
    model, _ = linedraw.checkpoint.load_generator(checkpoint)
    photo = torch.nn.functional.interpolate(torch.rand(1, 3, 40, 48), size=(160, 192), mode="bilinear")[0]
    whole = Converter(model, size=0, device="cpu").convert_tensors([photo])[0]
    tiled_converter = Converter(model, size=0, max_pixels=128 * 128, tile_overlap=64, device="cpu")
    calls = []
    model.register_forward_pre_hook(lambda m, inputs: calls.append(tuple(inputs[0].shape)))
    tiled = tiled_converter.convert_tensors([photo])[0]
    assert calls and all(s[-2] * s[-1] <= 128 * 128 for s in calls)  # it really ran in tiles
    inner = (tiled - whole).abs()[:, 8:-8, 8:-8]
    assert inner.max() < 0.02 and inner.mean() < 0.002


def test_postprocess_invert_threshold_line_weight():
    drawing = torch.ones(1, 1, 9, 9)
    drawing[..., 4, :] = 0.0  # one dark horizontal line, 1 px wide
    drawing[..., 0, 0] = 0.6
    thick = postprocess(drawing, line_weight=1)
    assert (thick[0, 0, :, 4] == 0).sum() == 3  # 3 px wide now
    thin = postprocess(drawing, line_weight=-1)
    assert thin[0, 0, 4].min() == 1.0  # a 1 px line vanishes when thinned by 1
    binary = postprocess(drawing, threshold=0.5)
    assert set(binary.unique().tolist()) == {0.0, 1.0} and binary[0, 0, 0, 0] == 1.0
    assert torch.equal(postprocess(drawing, invert=True), 1 - drawing)


def test_converter_post_processing_options(checkpoint):
    model, _ = linedraw.checkpoint.load_generator(checkpoint)
    photo = _photo()
    plain = np.asarray(Converter(model, size=32, device="cpu")(photo), dtype=int)
    inverted = np.asarray(Converter(model, size=32, device="cpu", invert=True)(photo), dtype=int)
    assert np.abs(inverted - (255 - plain)).max() <= 1
    binary = np.asarray(Converter(model, size=32, device="cpu", threshold=0.5)(photo))
    assert set(np.unique(binary)) <= {0, 255}
    thick = np.asarray(Converter(model, size=32, device="cpu", line_weight=2)(photo), dtype=int)
    assert (thick <= plain).all() and thick.mean() < plain.mean()
    with pytest.raises(ValueError, match="CUDA"):
        Converter(model, device="cpu", half=True)


# ---------------------------------------------------------------------------------------------- CLI


def _bad_and_odd_files(folder: Path) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """Write every kind of unusual input; returns {good relative path: expected output size}, {bad paths}."""
    good: dict[str, tuple[int, int]] = {}
    for i in range(3):
        _photo(40 + i, 30, seed=i).save(folder / f"good {i}.jpg")
        good[f"good {i}.jpg"] = (40 + i, 30)
    Image.new("CMYK", (24, 20), (0, 200, 30, 10)).save(folder / "cmyk.jpg")
    good["cmyk.jpg"] = (24, 20)
    Image.fromarray((np.arange(20 * 24, dtype=np.uint16) * 100).reshape(20, 24)).save(folder / "gray16.png")
    good["gray16.png"] = (24, 20)
    _photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "palette.png")
    good["palette.png"] = (48, 36)
    _photo().convert("RGBA").save(folder / "rgba.png")
    good["rgba.png"] = (48, 36)
    _photo().convert("L").save(folder / "gray.png")
    good["gray.png"] = (48, 36)
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(40, 20).save(folder / "rotated.jpg", exif=exif.tobytes())
    good["rotated.jpg"] = (20, 40)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one.png")
    good["one.png"] = (1, 1)
    name = os.fsdecode(b"caf\xe9 latin1.png")
    _photo().save(folder / name)
    good[name] = (48, 36)

    (folder / "zero.png").write_bytes(b"")
    _photo(120, 90).save(folder / "truncated.jpg")
    data = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("not an image")
    (folder / "noise.png").write_bytes(np.random.default_rng(0).bytes(500))
    _png_header_only(folder / "bomb.png", 100_000, 100_000)  # declares 10 Gpx in ~80 bytes
    bad = {"zero.png", "truncated.jpg", "text.jpg", "noise.png", "bomb.png"}
    return good, bad


def test_cli_converts_good_files_and_reports_each_bad_one(tmp_path, checkpoint, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good, bad = _bad_and_odd_files(inputs)
    errors = tmp_path / "errors.csv"
    code = _convert(inputs, "-o", tmp_path / "out", "--checkpoint", checkpoint, "--size", 32, "--errors", errors)
    assert code == 1
    for name, size in good.items():
        output = tmp_path / "out" / Path(name).with_suffix(".png")
        assert Image.open(output).size == size, name
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == {Path(n).with_suffix(".png").name for n in good}
    stderr = capsys.readouterr().err
    failed_lines = [line for line in stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed_lines) == len(bad)
    for name in bad:
        assert sum(name in line for line in failed_lines) == 1
    with open(errors, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {Path(r["path"]).name for r in rows} == bad
    reasons = {Path(r["path"]).name: r["reason"] for r in rows}
    assert "empty" in reasons["zero.png"] and "decompression bomb" in reasons["bomb.png"]
    assert "truncated" in reasons["truncated.jpg"] and "not an image" in reasons["text.jpg"]


def test_cli_keeps_structure_and_skip_existing_resumes(tmp_path, checkpoint, capsys):
    for relative in ["a.jpg", "x/b.png", "x/y/c.jpg"]:
        (tmp_path / "in" / relative).parent.mkdir(parents=True, exist_ok=True)
        _photo().save(tmp_path / "in" / relative)
    out = tmp_path / "out"
    args = [tmp_path / "in", "-o", out, "--checkpoint", checkpoint, "--size", 16, "--format", "webp"]
    assert _convert(*args) == 0
    outputs = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert outputs == ["a.webp", "x/b.webp", "x/y/c.webp"]
    (out / "x" / "b.webp").unlink()
    stamp = (out / "a.webp").stat().st_mtime_ns
    capsys.readouterr()
    assert _convert(*args, "--skip-existing") == 0
    assert "converted 1, skipped 2, failed 0" in capsys.readouterr().out
    assert (out / "x" / "b.webp").is_file() and (out / "a.webp").stat().st_mtime_ns == stamp


def test_cli_name_collisions_and_in_place_guard(tmp_path, checkpoint, capsys):
    _photo().save(tmp_path / "same.jpg")
    _photo().save(tmp_path / "same.png")
    assert _convert(tmp_path / "same.jpg", tmp_path / "same.png", "-o", tmp_path / "out", "--checkpoint",
                    checkpoint, "--size", 16) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["same.png", "same.png.png"]  # jpg keeps the name
    before = (tmp_path / "same.png").read_bytes()
    assert _convert(tmp_path / "same.png", "-o", tmp_path, "--checkpoint", checkpoint) == 1
    assert (tmp_path / "same.png").read_bytes() == before
    assert "would overwrite the input" in capsys.readouterr().err


def test_cli_exit_codes_for_setup_errors(tmp_path, checkpoint, capsys):
    _photo().save(tmp_path / "p.png")
    assert _convert(tmp_path / "p.png", "-o", tmp_path / "out", "--checkpoint", "no_such_model") == 2
    err = capsys.readouterr().err
    assert "no_such_model" in err and "path of a .safetensors file" in err  # the library names no flag
    assert _convert(tmp_path / "empty_dir_glob_*.png", "-o", tmp_path / "out", "--checkpoint", checkpoint) == 2
    assert _convert(tmp_path / "p.png", "-o", tmp_path / "out", "--checkpoint", checkpoint, "--half",
                    "--device", "cpu") == 2
    assert "CUDA" in capsys.readouterr().err


def test_failed_save_leaves_no_partial_file(tmp_path, checkpoint, monkeypatch, capsys):
    for i in range(3):
        _photo(seed=i).save(tmp_path / f"p{i}.jpg")
    real_save, calls = Image.Image.save, []

    def flaky_save(self, fp, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the first write dies half-way
            fp.write(b"\x89PNG\r\n\x1a\n half")
            raise OSError("No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", flaky_save)
    out = tmp_path / "out"
    assert _convert(*(tmp_path / f"p{i}.jpg" for i in range(3)), "-o", out, "--checkpoint", checkpoint,
                    "--size", 16) == 1
    assert "No space left on device" in capsys.readouterr().err
    left = list(out.iterdir())
    assert len(left) == 2 and all(p.suffix == ".png" and not p.name.startswith(".") for p in left)
    for path in left:
        Image.open(path).load()


@pytest.mark.slow
def test_killed_run_leaves_only_complete_files(tmp_path, checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(300):
        _photo(64, 48, seed=i).save(inputs / f"p{i:03d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "linedraw", "convert", str(inputs), "-o", str(out), "--checkpoint",
               str(checkpoint), "--size", "64", "--batch-size", "2", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 400  # generous: starting torch in a child is slow on a busy machine
    while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 5 and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = list(out.glob("*.png"))
    assert 5 <= len(finished) < 300, "the run should have been killed part-way"
    for path in finished:
        with Image.open(path) as image:
            image.load()  # every visible output is complete
    # Resuming converts exactly the rest.
    assert _convert(inputs, "-o", out, "--checkpoint", checkpoint, "--size", 64, "--skip-existing") == 0
    assert len(list(out.glob("*.png"))) == 300


def test_processes_split_the_work(tmp_path, checkpoint, monkeypatch):
    for i in range(5):
        _photo(seed=i).save(tmp_path / f"p{i}.png")
    written = []
    for rank in range(2):
        # What `accelerate launch` / torchrun set for each process.
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        out = tmp_path / f"out{rank}"
        assert _convert(*(tmp_path / f"p{i}.png" for i in range(5)), "-o", out, "--checkpoint", checkpoint,
                        "--size", 16, "--device", "cpu", "--errors", tmp_path / "errors.csv") == 0
        written.append({p.name for p in out.glob("*.png")})
        assert (tmp_path / f"errors.rank{rank}.csv").is_file()
    assert written[0].isdisjoint(written[1]) and written[0] | written[1] == {f"p{i}.png" for i in range(5)}


def test_models_command_lists_cards(tmp_path, monkeypatch, checkpoint, capsys):
    monkeypatch.setenv("LINEDRAW_CHECKPOINTS", str(checkpoint.parent))
    checkpoint.with_suffix(".md").write_text("\n# Tiny test generator\n\nDetails.\n")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "Tiny test generator" in out
    checkpoint.with_suffix(".md").unlink()


def test_checkpoint_recommended_size_is_the_default_and_an_explicit_size_wins():
    from linedraw.convert import DEFAULT_SIZE, Converter
    from linedraw.models import create_model

    model = create_model("resnet_generator", in_channels=3, out_channels=1, ngf=4, n_blocks=1)
    assert Converter(model, {}, device="cpu").size == DEFAULT_SIZE
    assert Converter(model, {"inference": {"size": 192}}, device="cpu").size == 192
    assert Converter(model, {"inference": {"size": 192}}, size=64, device="cpu").size == 64


def test_converter_pads_to_the_model_s_own_size_multiple():
    """The padding grid is the model's `size_multiple`, not a copy of the shipped generators' 4."""
    from tests.synthetic import Needs8

    photo = torch.rand(3, 36, 52)
    whole = Converter(Needs8(), size=0, device="cpu").convert_tensors([photo])[0]
    assert whole.shape == (1, 36, 52)
    tiled = Converter(Needs8(), size=0, max_pixels=24 * 24, tile_overlap=12, device="cpu")
    assert tiled.tile_overlap % 8 == 0
    assert tiled.convert_tensors([photo])[0].shape == (1, 36, 52)
