"""Image I/O: every kind of bad or unusual input either decodes correctly or raises one clear ImageError."""
from __future__ import annotations

import os
import zlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from linedraw.images import (
    ImageError,
    display_path,
    list_images,
    open_image,
    save_image,
    to_pil,
    to_tensor,
)


def _photo(width: int = 40, height: int = 30) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def _png_bomb(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header declares a huge 1-bit canvas (the IDAT is never reached by our check)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("zero.png", lambda p: p.write_bytes(b""), "empty file"),
        ("text.jpg", lambda p: p.write_text("this is not an image\n"), "not an image"),
        ("random.png", lambda p: p.write_bytes(os.urandom(2000)), "not an image"),
        ("missing.png", lambda p: None, "no such file"),
    ],
)
def test_unreadable_files_raise_image_error_naming_the_file(tmp_path, name, make, reason):
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageError) as info:
        open_image(path)
    assert str(path) in str(info.value) and reason in str(info.value)
    assert info.value.path == str(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_raise(tmp_path, fmt):
    path = tmp_path / f"cut.{fmt.lower()}"
    _photo(200, 150).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated|corrupt"):
        open_image(path)


def test_directory_raises(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        open_image(tmp_path)


def test_decompression_bomb_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    _png_bomb(path, 100_000, 100_000)
    assert path.stat().st_size < 200
    with pytest.raises(ImageError, match="decompression bomb"):
        open_image(path)
    _png_bomb(path, 300, 200)
    with pytest.raises(ImageError, match="decompression bomb"):
        open_image(path, max_pixels=1000)


def test_modes_are_normalised(tmp_path):
    # CMYK JPEG: pure cyan is (0, 255, 255) in RGB.
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(cmyk, quality=100)
    rgb = np.asarray(open_image(cmyk)).astype(int)
    assert np.abs(rgb - [0, 255, 255]).max() <= 6

    # 16-bit grayscale PNG: 65535 is white, 32768 is mid grey.
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(gray16)
    assert Image.open(gray16).mode.startswith("I")
    assert np.asarray(open_image(gray16, mode="L")).tolist() == [[0, 128, 255]]
    assert open_image(gray16).mode == "RGB"

    # Palette without transparency keeps its colours.
    palette = tmp_path / "palette.png"
    _photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(palette)
    assert open_image(palette).mode == "RGB"

    # Grayscale becomes RGB with equal channels.
    gray = tmp_path / "gray.png"
    Image.new("L", (5, 4), 77).save(gray)
    assert np.asarray(open_image(gray)).reshape(-1, 3).tolist() == [[77, 77, 77]] * 20

    # 1x1 works.
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tiny)
    assert open_image(tiny).size == (1, 1)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(tmp_path, mode):
    path = tmp_path / f"alpha_{mode}.png"
    if mode == "RGBA":
        image = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
        image.putpixel((0, 0), (255, 0, 0, 255))
    elif mode == "LA":
        image = Image.new("LA", (4, 2), (0, 0))
        image.putpixel((0, 0), (0, 255))
    else:
        image = Image.new("P", (4, 2), 1)
        image.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)
        image.putpixel((0, 0), 0)
        image.info["transparency"] = 1
    image.save(path)
    rgb = np.asarray(open_image(path))
    assert rgb[1, 1].tolist() == [255, 255, 255]  # fully transparent -> white
    assert rgb[0, 0].tolist() != [255, 255, 255]  # opaque pixel kept


def test_exif_orientation_is_honoured(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(path, exif=exif.tobytes())
    assert open_image(path).size == (20, 40)


def test_non_utf8_and_spaces_in_paths(tmp_path):
    directory = os.fsencode(tmp_path) + b"/dir with spaces"
    os.mkdir(directory)
    raw = directory + b"/caf\xe9 photo.png"  # Latin-1 byte: not valid UTF-8
    _photo().save(os.fsdecode(raw), format="PNG")
    [(path, relative)] = list_images([os.fsdecode(directory)])
    assert open_image(path).size == (40, 30)
    text = display_path(path)
    text.encode("utf-8")  # printable
    assert "\\xe9" in text
    broken = os.fsdecode(directory + b"/\xff broken.png")
    Path(broken).write_bytes(b"junk")
    with pytest.raises(ImageError) as info:
        open_image(broken)
    str(info.value).encode("utf-8")


def test_tensor_roundtrip():
    image = _photo(7, 5)
    tensor = to_tensor(image)
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.float32
    assert 0 <= tensor.min() and tensor.max() <= 1
    assert np.array_equal(np.asarray(to_pil(tensor)), np.asarray(image))
    gray = to_tensor(image.convert("L"))
    assert gray.shape == (1, 5, 7) and to_pil(gray).mode == "L"
    assert to_tensor(Image.new("RGBA", (2, 2), (0, 0, 0, 0))).min() == 1.0  # transparent -> white


def test_save_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out" / "drawing.png"
    save_image(torch.rand(1, 8, 8), target)
    before = target.read_bytes()

    def fail(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(RuntimeError):
        save_image(torch.zeros(1, 8, 8), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["drawing.png"]


def test_save_formats(tmp_path):
    for name in ("a.jpg", "a.webp", "a.png"):
        save_image(Image.new("L", (4, 4), 0), tmp_path / name)
        assert Image.open(tmp_path / name).size == (4, 4)
    save_image(Image.new("L", (4, 4), 0), tmp_path / "noext", format="PNG")
    assert Image.open(tmp_path / "noext").format == "PNG"
    with pytest.raises(ValueError):
        save_image(Image.new("L", (4, 4), 0), tmp_path / "noext")


def test_list_images_dirs_globs_files(tmp_path):
    for relative in ["a.jpg", "sub/b.png", "sub/deeper/c.JPEG", "sub/notes.txt", ".hidden/d.png", "sub/.e.png"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    found = list_images([tmp_path])
    assert [str(r) for _, r in found] == ["a.jpg", "sub/b.png", "sub/deeper/c.JPEG"]
    assert all(p == tmp_path / r for p, r in found)

    globbed = list_images([str(tmp_path / "sub" / "**" / "*")])
    assert sorted(str(r) for _, r in globbed) == ["b.png", "deeper/c.JPEG"]

    explicit = list_images([tmp_path / "sub" / "notes.txt", tmp_path / "nope.png", tmp_path / "a.jpg", tmp_path])
    assert [str(r) for _, r in explicit] == ["notes.txt", "nope.png", "a.jpg", "sub/b.png", "sub/deeper/c.JPEG"]


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os
    import stat

    from linedraw.images import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "x.bin", lambda h: h.write(b"1"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644
