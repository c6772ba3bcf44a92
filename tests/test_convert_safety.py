"""Convert hardening: nothing lost (distinct outputs, Ctrl-C summary), nobody in (bounded work, clear refusals)."""
from __future__ import annotations

import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from linedraw.checkpoint import CheckpointError, load_generator, save_generator
from linedraw.cli import build_parser, main
from linedraw.convert import Converter
from linedraw.errors import LinedrawError, UsageError
from linedraw.models import create_model

TINY = {"model": "resnet_generator", "kwargs": {"in_channels": 3, "out_channels": 1, "ngf": 8, "n_blocks": 1}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model(TINY["model"], **TINY["kwargs"])
    return save_generator(model, tmp_path_factory.mktemp("ckpt") / "tiny", TINY)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_generator(checkpoint)[0]


def _photo(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (max(2, height // 6), max(2, width // 6), 3), dtype=np.uint8))
    return small.resize((width, height), Image.BILINEAR)


def _convert(*args) -> int:
    return main(["convert", *map(str, args), "--workers", "1"])


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG declaring a big canvas (its pixel data is missing, so decoding it fails after the size checks)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------ 1. distinct outputs


def test_same_named_files_from_two_folders_both_survive(tmp_path, checkpoint, capsys):
    for folder, seed in (("dA", 0), ("dB", 1)):
        (tmp_path / folder).mkdir()
        _photo(seed=seed).save(tmp_path / folder / "x.jpg")
    out = tmp_path / "out"
    assert _convert(tmp_path / "dA" / "x.jpg", tmp_path / "dB" / "x.jpg", "-o", out, "--checkpoint", checkpoint,
                    "--size", 16) == 0
    assert "converted 2" in capsys.readouterr().out
    assert _files(out) == ["dA/x.png", "dB/x.png"]
    assert not np.array_equal(np.asarray(Image.open(out / "dA/x.png")), np.asarray(Image.open(out / "dB/x.png")))

    out2 = tmp_path / "out2"  # whole folders: the same separation
    assert _convert(tmp_path / "dA", tmp_path / "dB", "-o", out2, "--checkpoint", checkpoint, "--size", 16) == 0
    assert _files(out2) == ["dA/x.png", "dB/x.png"]


def test_inputs_from_several_folders_go_under_their_names_whatever_files_they_hold(tmp_path, checkpoint, capsys):
    (tmp_path / "dA" / "sub").mkdir(parents=True)
    (tmp_path / "dB").mkdir()
    _photo(seed=0).save(tmp_path / "dA" / "a.jpg")
    _photo(seed=1).save(tmp_path / "dA" / "sub" / "b.jpg")
    _photo(seed=2).save(tmp_path / "dB" / "c.jpg")
    out = tmp_path / "out"
    args = [tmp_path / "dA", tmp_path / "dB", "-o", out, "--checkpoint", checkpoint, "--size", 16]
    assert _convert(*args) == 0
    assert _files(out) == ["dA/a.png", "dA/sub/b.png", "dB/c.png"]
    # A photo that would have collided arrives: nothing already written moves, and a rerun converts only it.
    _photo(seed=3).save(tmp_path / "dB" / "a.jpg")
    capsys.readouterr()
    assert _convert(*args, "--skip-existing") == 0
    assert "converted 1, skipped 3" in capsys.readouterr().out
    assert _files(out) == ["dA/a.png", "dA/sub/b.png", "dB/a.png", "dB/c.png"]
    # One folder alone is mirrored as it is.
    assert _convert(tmp_path / "dA", "-o", tmp_path / "one", "--checkpoint", checkpoint, "--size", 16) == 0
    assert _files(tmp_path / "one") == ["a.png", "sub/b.png"]


def test_input_folders_that_share_a_name_are_refused_up_front(tmp_path, checkpoint, capsys):
    for parent in ("x", "y"):
        (tmp_path / parent / "photos").mkdir(parents=True)
        _photo().save(tmp_path / parent / "photos" / f"{parent}.jpg")
    out = tmp_path / "out"
    assert _convert(tmp_path / "x" / "photos", tmp_path / "y" / "photos", "-o", out, "--checkpoint", checkpoint,
                    "--size", 16) == 2
    err = capsys.readouterr().err
    assert "share the name 'photos'" in err and "Traceback" not in err
    assert not out.exists() or _files(out) == []


def test_files_named_one_by_one_never_overwrite_another_input(tmp_path, checkpoint, capsys):
    """`convert photos/* -o photos`: a.jpg's drawing would be photos/a.png, which is another input photo."""
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(seed=0).save(photos / "a.jpg")
    _photo(seed=1).save(photos / "a.png")
    before = {name: (photos / name).read_bytes() for name in ("a.jpg", "a.png")}
    rc = _convert(photos / "a.jpg", photos / "a.png", "-o", photos, "--checkpoint", checkpoint, "--size", 16)
    err = capsys.readouterr().err
    assert rc == 1 and "overwrite the input" in err and "Traceback" not in err
    assert {name: (photos / name).read_bytes() for name in before} == before, "an input photo was overwritten"


def test_an_input_folder_inside_the_output_folder_is_converted(tmp_path, checkpoint, capsys, monkeypatch):
    """`convert photos -o .`: the photos lie inside the output folder, but they are not earlier drawings."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    _photo().save(tmp_path / "photos" / "a.jpg")
    assert _convert("photos", "-o", ".", "--checkpoint", checkpoint, "--size", 16) == 0
    assert "converted 1" in capsys.readouterr().out
    assert (tmp_path / "a.png").is_file()


def test_same_stem_siblings_get_fixed_names_and_adding_one_renames_nothing(tmp_path, checkpoint, capsys):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    _photo(seed=0).save(photos / "cat.jpg")
    args = [photos, "-o", out, "--checkpoint", checkpoint, "--size", 16]
    assert _convert(*args) == 0
    assert _files(out) == ["cat.png"]
    first = (out / "cat.png").read_bytes()
    _photo(seed=1).save(photos / "cat.png")  # a same-stem sibling of lower priority arrives
    capsys.readouterr()
    assert _convert(*args, "--skip-existing") == 0
    assert "converted 1, skipped 1" in capsys.readouterr().out
    assert _files(out) == ["cat.png", "cat.png.png"]
    assert (out / "cat.png").read_bytes() == first  # cat.jpg's drawing kept its name
    # A fresh run gives the same mapping (deterministic), and the jpg's drawing is the same picture.
    fresh = tmp_path / "fresh"
    assert _convert(photos, "-o", fresh, "--checkpoint", checkpoint, "--size", 16) == 0
    assert _files(fresh) == ["cat.png", "cat.png.png"]
    assert np.array_equal(np.asarray(Image.open(fresh / "cat.png")), np.asarray(Image.open(out / "cat.png")))


def test_rerun_into_an_output_folder_inside_the_input_ignores_earlier_outputs(tmp_path, checkpoint, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo().save(photos / "a.png")
    args = [photos, "-o", photos / "drawings", "--checkpoint", checkpoint, "--size", 16]
    assert _convert(*args) == 0
    capsys.readouterr()
    assert _convert(*args) == 0
    assert "converted 1, skipped 0, failed 0" in capsys.readouterr().out
    assert _files(photos) == ["a.png", "drawings/a.png"]


def test_output_folder_equal_to_an_input_folder_is_refused(tmp_path, checkpoint, capsys):
    _photo().save(tmp_path / "a.jpg")
    assert _convert(tmp_path, "-o", tmp_path, "--checkpoint", checkpoint, "--size", 16) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "input folder" in err and "Traceback" not in err
    assert _files(tmp_path) == ["a.jpg"]


# ------------------------------------------------------------------------------------ 2. bounded work


def test_hostile_strips_are_refused_before_any_work(tmp_path, model, checkpoint, capsys):
    converter = Converter(model, size=32, device="cpu")
    for width in (3000, 100_000):
        with pytest.raises(LinedrawError, match="aspect ratio"):
            converter(Image.new("RGB", (width, 3), (120, 80, 40)))
    Image.new("RGB", (3000, 3), (120, 80, 40)).save(tmp_path / "strip.png")
    _photo().save(tmp_path / "fine.png")
    assert _convert(tmp_path / "strip.png", tmp_path / "fine.png", "-o", tmp_path / "out", "--checkpoint",
                    checkpoint, "--size", 32) == 1
    failed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "strip.png" in failed[0] and "aspect ratio" in failed[0]
    assert _files(tmp_path / "out") == ["fine.png"]


def test_processing_pixels_are_capped(model):
    converter = Converter(model, size=4000, device="cpu", refuse_above_pixels=1_000_000)
    with pytest.raises(LinedrawError, match="refuse_above_pixels"):
        converter(_photo(40, 30))  # 5333x4000 at the processing size


def test_the_pixel_cap_counts_the_padding_a_thin_strip_gets(model):
    """At native size a 1-px strip is padded to MIN_SIDE rows before the network: 16x the pixels it has."""
    converter = Converter(model, size=0, device="cpu", refuse_above_pixels=1_000_000)
    converter.check_photo(1, 60_000)  # 0.96 M padded pixels: fine
    with pytest.raises(LinedrawError, match="refuse_above_pixels"):
        converter.check_photo(1, 200_000)  # 0.2 M pixels, 3.2 M once padded


def test_refuse_limit_can_be_raised_above_pillows_own(tmp_path):
    from linedraw.images import ImageError, open_image

    big = tmp_path / "big.png"
    _png_header_only(big, 14000, 14000)  # 196 Mpx: above Pillow's own error limit of ~179 Mpx
    with pytest.raises(ImageError, match="max_pixels"):
        open_image(big)
    with pytest.raises(ImageError) as raised:
        open_image(big, max_pixels=200_000_000)
    assert "bomb" not in str(raised.value) and "truncated" in str(raised.value)  # got past both size guards


def test_cli_bomb_message_names_the_flag(tmp_path, checkpoint, capsys):
    _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    assert _convert(tmp_path / "bomb.png", "-o", tmp_path / "out", "--checkpoint", checkpoint) == 1
    assert "--refuse-above-pixels" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ 3. argument ranges


@pytest.mark.parametrize("name, value", [
    ("line_weight", 1000), ("line_weight", -33), ("size", -1), ("size", 100_000), ("batch_size", 0),
    ("threshold", 1.5), ("threshold", float("nan")), ("tile_overlap", -1), ("max_pixels", 10),
    ("output_size", 0), ("refuse_above_pixels", 0),
])
def test_converter_refuses_out_of_range_options_naming_them(model, name, value):
    with pytest.raises(UsageError, match=name):
        Converter(model, device="cpu", **{name: value})


def test_cli_line_weight_and_workers_are_checked_up_front(tmp_path, checkpoint, capsys):
    _photo().save(tmp_path / "p.png")
    base = [tmp_path / "p.png", "-o", tmp_path / "out", "--checkpoint", checkpoint, "--size", 16]
    assert main(["convert", *map(str, base), "--line-weight", "1000"]) == 2
    assert "line_weight" in capsys.readouterr().err
    assert main(["convert", *map(str, base), "--workers", "-3"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ 4. one clear line


def test_truncated_safetensors_names_the_file(tmp_path, checkpoint):
    data = checkpoint.read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        load_generator(broken)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_pickle_checkpoints_are_refused_with_the_reason(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(CheckpointError) as raised:
        load_generator(path)
    message = str(raised.value)
    assert "pickle" in message and "not found" not in message and str(path) in message
    assert "save_generator" in message  # how to convert it


def test_architecture_is_checked_on_the_meta_device(tmp_path, checkpoint, monkeypatch):
    import linedraw.models

    real = linedraw.models.create_model
    devices = []

    def recording(name, **kwargs):
        devices.append(torch.empty(0).device.type)
        if devices[-1] != "meta" and kwargs.get("ngf", 0) > 1000:
            raise AssertionError("would allocate the real model before checking the weights' shapes")
        return real(name, **kwargs)

    monkeypatch.setattr(linedraw.models, "create_model", recording)
    (tmp_path / "huge.safetensors").write_bytes(checkpoint.read_bytes())
    (tmp_path / "huge.json").write_text(json.dumps({**TINY, "kwargs": {**TINY["kwargs"], "ngf": 100_000}}))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_generator(tmp_path / "huge.safetensors")
    assert devices == ["meta"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_devices_are_one_clear_line(tmp_path, checkpoint, capsys):
    from linedraw.convert import resolve_device

    for device in ("cuda", "cuda:5"):
        with pytest.raises(UsageError, match="device"):
            resolve_device(device)
    with pytest.raises(UsageError, match="device"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")
    _photo().save(tmp_path / "p.png")
    assert _convert(tmp_path / "p.png", "-o", tmp_path / "out", "--checkpoint", checkpoint, "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert "error:" in err and "cuda" in err and "Traceback" not in err


def test_unwritable_errors_file_is_refused_before_converting(tmp_path, checkpoint, capsys):
    _photo().save(tmp_path / "p.png")
    (tmp_path / "plain_file").write_text("")
    for errors in (tmp_path / "plain_file" / "errors.csv",  # its parent is a file: it can never be written
                   tmp_path / "no" / "such" / "errors.csv"):  # a missing folder: more likely a typo
        assert _convert(tmp_path / "p.png", "-o", tmp_path / "out", "--checkpoint", checkpoint, "--size", 16,
                        "--errors", errors) == 2
        err = capsys.readouterr().err
        assert "errors.csv" in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()  # nothing was converted first


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_errors_folder_is_refused_up_front(tmp_path):
    from linedraw.images import check_writable

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(LinedrawError, match="not writable"):
            check_writable(locked / "errors.csv")
    finally:
        locked.chmod(0o755)


def test_export_refuses_an_unwritable_output_before_exporting(tmp_path, checkpoint, capsys):
    (tmp_path / "plain_file").write_text("")
    assert main(["export", "-o", str(tmp_path / "plain_file" / "g.onnx"), "--checkpoint", str(checkpoint)]) == 2
    assert "g.onnx" in capsys.readouterr().err


def test_export_example_size_off_the_grid_is_one_line(tmp_path, checkpoint, capsys):
    assert main(["export", "-o", str(tmp_path / "g.onnx"), "--checkpoint", str(checkpoint),
                 "--example-size", "30"]) == 2
    err = capsys.readouterr().err
    assert "example_size" in err and "Traceback" not in err


def test_ctrl_c_prints_the_summary_so_far_and_exits_130(tmp_path, checkpoint, monkeypatch, capsys):
    for i in range(3):
        _photo(seed=i).save(tmp_path / f"p{i}.png")
    real, calls = Converter.convert, []

    def interrupted(self, images):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(Converter, "convert", interrupted)
    out = tmp_path / "out"
    code = _convert(*(tmp_path / f"p{i}.png" for i in range(3)), "-o", out, "--checkpoint", checkpoint, "--size", 16,
                    "--batch-size", "1")
    captured = capsys.readouterr()
    assert code == 130
    assert "converted 1" in captured.out and "interrupted" in captured.err and "Traceback" not in captured.err
    assert _files(out) == ["p0.png"]


# ------------------------------------------------------------------------------------ 5. smaller things


def test_multi_frame_inputs_warn_once_each(tmp_path, checkpoint, capsys):
    frames = [_photo(seed=i).convert("P") for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    _photo().save(tmp_path / "still.png")
    assert _convert(tmp_path / "anim.gif", tmp_path / "still.png", "-o", tmp_path / "out", "--checkpoint",
                    checkpoint, "--size", 16) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "anim.gif" in warnings[0] and "3 frames" in warnings[0]


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path, checkpoint):
    _photo().save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    stale, fresh = out / ".a.png.k3j_9xq2.tmp", out / ".b.png.abcdefgh.tmp"
    others = [out / ".keep.tmp", out / "notes.tmp", out / ".a.png.short.tmp"]
    for path in [stale, fresh, *others]:
        path.write_bytes(b"partial")
    old = time.time() - 3600
    for path in [stale, *others]:
        os.utime(path, (old, old))
    assert _convert(tmp_path / "a.png", "-o", out, "--checkpoint", checkpoint, "--size", 16) == 0
    assert not stale.exists()
    assert fresh.exists() and all(p.exists() for p in others)  # a write in flight, and files not ours


def test_renamed_size_flags_and_deprecated_spellings(tmp_path, checkpoint, capsys):
    _photo(64, 48).save(tmp_path / "p.png")
    base = [tmp_path / "p.png", "--checkpoint", checkpoint, "--size", 32]
    assert _convert(*base, "-o", tmp_path / "new", "--tile-above-pixels", 1024, "--refuse-above-pixels", 10**6) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert _convert(*base, "-o", tmp_path / "old", "--max-pixels", 1024, "--max-input-pixels", 10**6) == 0
    err = capsys.readouterr().err
    assert "--max-pixels is deprecated" in err and "--tile-above-pixels" in err
    assert "--max-input-pixels is deprecated" in err and "--refuse-above-pixels" in err
    assert (tmp_path / "new" / "p.png").read_bytes() == (tmp_path / "old" / "p.png").read_bytes()


def test_output_size_sets_the_written_short_side(tmp_path, checkpoint):
    _photo(64, 48).save(tmp_path / "p.png")
    assert _convert(tmp_path / "p.png", "-o", tmp_path / "out", "--checkpoint", checkpoint, "--size", 16,
                    "--output-size", 24) == 0
    assert Image.open(tmp_path / "out" / "p.png").size == (32, 24)


def test_export_defaults_to_onnx_and_commands_have_descriptions(capsys):
    parser = build_parser()
    args = parser.parse_args(["export", "-o", "g.onnx"])  # --onnx is no longer required
    assert args.output == "g.onnx"
    assert parser.parse_args(["export", "--onnx", "-o", "g.onnx"]).output == "g.onnx"  # still accepted, a no-op
    assert "--onnx is deprecated" in capsys.readouterr().err
    for command in ("export", "models"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        help_text = capsys.readouterr().out
        assert len(help_text.split("\n\n")[1].strip()) > 20  # a description paragraph after the usage line
